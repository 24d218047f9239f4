//! `ovl run` as root and as a real unprivileged user (uid 65534 through setpriv).

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const NOBODY: u32 = 65534;

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn root_or_skip() -> bool {
    common::root_or_skip(
        "these tests need root (the unprivileged one switches to uid 65534 itself)",
    )
}

#[test]
fn run_on_a_throwaway_upper_leaves_the_target_untouched() {
    if !root_or_skip() {
        return;
    }
    let t = open_tempdir();
    let r = t.path();
    write(r, "usr/share/doc", "doc");
    let usr = r.join("usr");
    let state = r.join("state");
    let o = ovl_with_state(
        &state,
        [
            "run",
            "--tmp=8m",
            "--target",
            &s(&usr),
            "--",
            "sh",
            "-c",
            &format!(
                "touch {u}/share/ovl-was-here && rm {u}/share/doc && ls {u}/share",
                u = s(&usr)
            ),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "ovl-was-here\n");
    assert!(!usr.join("share/ovl-was-here").exists());
    assert_eq!(
        std::fs::read_to_string(usr.join("share/doc")).unwrap(),
        "doc"
    );
    assert!(!is_mounted(&usr));
}

#[test]
fn run_propagates_exit_codes() {
    if !root_or_skip() {
        return;
    }
    let t = open_tempdir();
    let r = t.path();
    mkdirs(r, &["d"]);
    let d = s(&r.join("d"));
    let state = r.join("state");
    let o = ovl_with_state(&state, ["run", "--target", &d, "--", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7));
    let o = ovl_with_state(
        &state,
        ["run", "--target", &d, "--", "sh", "-c", "kill -TERM $$"],
    );
    assert_eq!(o.status.code(), Some(128 + 15));
    let o = ovl_with_state(&state, ["run", "--target", &d, "--", "/nonexistent/cmd"]);
    assert_eq!(o.status.code(), Some(127));
    assert!(
        stderr(&o).starts_with("ovl: /nonexistent/cmd: command not found"),
        "{}",
        stderr(&o)
    );
    let o = ovl_with_state(
        &state,
        ["run", "--target", "/nonexistent/dir", "--", "true"],
    );
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).starts_with("ovl: /nonexistent/dir: "),
        "{}",
        stderr(&o)
    );
}

#[test]
fn run_keeps_or_persists_the_upper() {
    if !root_or_skip() {
        return;
    }
    let t = open_tempdir();
    let r = t.path();
    write(r, "app/conf", "old");
    write(r, "app/gone", "g");
    let app = s(&r.join("app"));
    let state = r.join("state");
    let keep = r.join("kept");
    let script = format!("echo new > {app}/conf && rm {app}/gone && echo a > {app}/added");
    let o = ovl_with_state(
        &state,
        [
            "run",
            "--target",
            &app,
            "--keep",
            &s(&keep),
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(r.join("app/conf")).unwrap(), "old");
    // The kept upper is a real overlay upper: ovl diff reads it.
    let o = ovl(["diff", "--lower", &app, &s(&keep)]);
    assert_eq!(
        lines(&o),
        ["A /added", "C /conf", "D /gone"],
        "{}",
        stderr(&o)
    );
    // --keep refuses a non-empty directory before running anything.
    let o = ovl_with_state(
        &state,
        ["run", "--target", &app, "--keep", &s(&keep), "--", "true"],
    );
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("not empty"), "{}", stderr(&o));

    // --upper persists across runs.
    let up = s(&r.join("session"));
    let run_with_upper = |cmd: &[&str]| {
        let mut args = vec!["run", "--target", &app, "--upper", &up, "--"];
        args.extend(cmd);
        ovl_with_state(&state, args)
    };
    let o = run_with_upper(&["sh", "-c", &format!("echo 1 > {app}/counter")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run_with_upper(&["cat", &format!("{app}/counter")]);
    assert_eq!(stdout(&o), "1\n", "{}", stderr(&o));
    assert!(!r.join("app/counter").exists());
}

#[test]
fn run_with_the_overlay_as_root_file_system() {
    if !root_or_skip() {
        return;
    }
    let t = open_tempdir();
    let state = t.path().join("state");
    let marker = format!("/etc/ovl-test-{}", std::process::id());
    let o = ovl_with_state(
        &state,
        [
            "run",
            "--root",
            "--",
            "sh",
            "-c",
            &format!("echo in > {marker} && cat {marker} && test -e /proc/self/status && test -e /dev/null"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "in\n");
    assert!(!Path::new(&marker).exists(), "host root untouched");
}

/// The test binary copied where uid 65534 can execute it.
fn ovl_for_nobody(dir: &Path) -> PathBuf {
    let p = dir.join("ovl");
    std::fs::copy(ovl_bin(), &p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn chown_tree(p: &Path, uid: u32) {
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{uid}"))
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn run_as_an_unprivileged_user() {
    if !root_or_skip() {
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        return skip_or_fail("setpriv (util-linux) is not installed");
    }
    let t = open_tempdir();
    let r = t.path();
    write(r, "proj/src/main.c", "int main;");
    mkdirs(r, &["out"]);
    chown_tree(r, NOBODY);
    let ovl_bin = ovl_for_nobody(r);
    let proj = s(&r.join("proj"));
    let keep = s(&r.join("out/kept"));
    let script = format!(
        "id -u && echo patched > {proj}/src/main.c && mkdir {proj}/build && cat {proj}/src/main.c; exit 3"
    );
    let o = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .arg(&ovl_bin)
        .args([
            "run", "--target", &proj, "--keep", &keep, "--", "sh", "-c", &script,
        ])
        .env("OVL_STATE_DIR", r.join("state"))
        .env_remove("XDG_RUNTIME_DIR")
        .current_dir(r)
        .output()
        .unwrap();
    if stderr(&o).contains("user namespaces may be disabled") {
        return skip_or_fail(&stderr(&o));
    }
    // Root inside the user namespace; the command's exit code comes through.
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(stdout(&o), "0\npatched\n");
    assert_eq!(
        std::fs::read_to_string(r.join("proj/src/main.c")).unwrap(),
        "int main;"
    );
    assert!(!r.join("proj/build").exists());
    // The kept upper belongs to the user and uses user.overlay.* xattrs (userxattr).
    let meta = std::fs::metadata(r.join("out/kept/src/main.c")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), NOBODY);
    let o = ovl(["check", "--json", &keep]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_ne!(v["xattr_namespace"], "trusted", "{v}");
    let o = ovl(["diff", "--lower", &proj, &keep]);
    assert_eq!(lines(&o), ["A /build", "C /src", "C /src/main.c"]);
}
