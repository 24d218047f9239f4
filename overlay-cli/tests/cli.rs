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
