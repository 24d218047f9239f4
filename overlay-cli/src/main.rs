fn main() {
    eprintln!("ovl: not implemented yet");
    std::process::exit(1);
}
