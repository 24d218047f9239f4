//! Help, completions and usage errors of the `ovl` binary.

mod common;

use common::*;

#[test]
fn completions_for_each_shell() {
    for (shell, marker) in [
        ("bash", "_ovl()"),
        ("zsh", "#compdef ovl"),
        ("fish", "complete -c ovl"),
    ] {
        let o = ovl(["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let s = stdout(&o);
        assert!(s.contains(marker), "{shell} script lacks {marker}");
        for sub in ["mount", "umount", "status", "probe", "run", "diff", "check"] {
            assert!(s.contains(sub), "{shell} script lacks subcommand {sub}");
        }
    }
    let o = ovl(["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn long_help_reads_like_a_man_page() {
    let o = ovl(["--help"]);
    assert!(o.status.success());
    let s = stdout(&o);
    for section in ["EXAMPLES:", "EXIT STATUS:", "ENVIRONMENT:", "bottom-first"] {
        assert!(s.contains(section), "ovl --help lacks {section}");
    }
    for sub in ["mount", "run", "diff", "check", "status", "probe", "umount"] {
        let o = ovl([sub, "--help"]);
        assert!(o.status.success(), "{sub} --help");
        assert!(
            stdout(&o).contains("EXAMPLES:"),
            "ovl {sub} --help has no examples"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    let o = ovl(["mount", "--upper", "u", "--tmp", "/mnt"]);
    assert_eq!(o.status.code(), Some(2));
    let o = ovl(["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    let o = ovl(["run", "--target", "/usr"]);
    assert_eq!(o.status.code(), Some(2), "run needs a command");
}

/// A pipe whose reading end is already closed: writing to it fails with EPIPE, as writing
/// into `| true` or `| head` does once the reader is gone.
fn closed_pipe() -> std::process::Stdio {
    let (r, w) = rustix::pipe::pipe().expect("pipe");
    drop(r);
    std::process::Stdio::from(w)
}

/// Run `ovl ARGS` with stdout and/or stderr going into a closed pipe.
fn ovl_into_closed_pipe(args: &[&str], stdout: bool, stderr: bool) -> std::process::Output {
    let mut c = std::process::Command::new(ovl_bin());
    c.args(args).env_remove("RUST_LOG");
    if stdout {
        c.stdout(closed_pipe());
    }
    if stderr {
        c.stderr(closed_pipe());
    }
    c.output().expect("run ovl")
}

#[test]
fn a_closed_pipe_is_not_a_panic() {
    for args in [
        &["completions", "bash"][..],
        &["--help"],
        &["mount", "--help"],
        &["probe"],
    ] {
        let o = ovl_into_closed_pipe(args, true, false);
        assert_eq!(o.status.code(), Some(0), "ovl {args:?} | true: {o:?}");
    }
    // An error written to a closed stderr: the exit status still says what happened.
    let o = ovl_into_closed_pipe(&["check", "/no/such/upper"], false, true);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let o = ovl_into_closed_pipe(&["frobnicate"], false, true);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}
