fn main() {
    eprintln!("ovl-fuse: not implemented yet");
    std::process::exit(1);
}
