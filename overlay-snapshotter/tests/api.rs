//! containerd's snapshotter test suite (`core/snapshots/testsuite`), ported: the same
//! sequences and checks, run over gRPC against `ovl-snapshotter` on its socket, mounting
//! what it returns the way containerd's `mount.All` does. The layer-content checks run
//! with the kernel overlay and with `ovl-fuse` (`--backend fuse`).

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use tonic::Code;

/// One test's snapshotter and play area.
struct Suite {
    // Drop order: the client's connection, then the daemon, then the directory.
    c: Client,
    d: Snapshotterd,
    _dir: tempfile::TempDir,
    ns: Ns,
    backend: &'static str,
    work: PathBuf,
    n: usize,
}

impl Suite {
    fn new(test: &str, backend: &'static str) -> Option<Suite> {
        if !can_mount(test) {
            return None;
        }
        let dir = scratch(None);
        let ns = Ns::Host;
        let d = Snapshotterd::start(&ns, dir.path(), backend);
        let c = d.client();
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        Some(Suite {
            c,
            d,
            _dir: dir,
            ns,
            backend,
            work,
            n: 0,
        })
    }

    fn fresh_dir(&mut self, prefix: &str) -> PathBuf {
        self.n += 1;
        let p = self.work.join(format!("{prefix}{}", self.n));
        std::fs::create_dir(&p).unwrap();
        p
    }

    /// Prepare `key` over `parent`, mount it, run `f` on the mounted tree, unmount.
    fn prepare_and(&mut self, key: &str, parent: &str, f: impl FnOnce(&Path)) {
        let m = self.c.prepare(key, parent, gc_root()).unwrap();
        let mp = self.fresh_dir("mnt");
        let g = mount_all(&self.ns, &m, &mp).unwrap();
        f(&mp);
        g.unmount();
    }

    /// containerd's `checkSnapshots`: a chain of snapshots, one per applier, each checked
    /// through a view against the same changes applied to a plain directory.
    fn check_snapshots(&mut self, appliers: &[Vec<Op>]) {
        let flat = self.fresh_dir("flat");
        let mut parent = String::new();
        for (i, a) in appliers.iter().enumerate() {
            let name = format!("layer-{}-{i}", self.n);
            let key = format!("{name}-prepare");
            self.prepare_and(&key, &parent, |mp| apply(mp, a));
            self.c.commit(&name, &key, gc_root()).unwrap();
            apply(&flat, a);
            let view = format!("{name}-view");
            let m = self.c.view(&view, &name, gc_root()).unwrap();
            if i > 0 {
                // Two layers or more: an overlay of the backend under test.
                let want = if self.backend == "fuse" {
                    "fuse3.ovl-fuse"
                } else {
                    "overlay"
                };
                assert_eq!(m[0].r#type, want);
            }
            let mp = self.fresh_dir("view");
            let g = mount_all(&self.ns, &m, &mp).unwrap();
            assert_eq!(
                manifest(&self.ns, &flat),
                manifest(&self.ns, &mp),
                "snapshot {} differs from the flat directory",
                i + 1
            );
            g.unmount();
            self.c.remove(&view).unwrap();
            parent = name;
        }
    }
}

/// fstest's appliers.
#[derive(Debug, Clone)]
enum Op {
    File(&'static str, &'static str, u32),
    Dir(&'static str, u32),
    RemoveAll(&'static str),
    Chown(&'static str, u32, u32),
    Link(&'static str, &'static str),
    Rename(&'static str, &'static str),
}

fn at(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

fn apply(root: &Path, ops: &[Op]) {
    for op in ops {
        match op {
            Op::File(p, c, m) => {
                let p = at(root, p);
                std::fs::write(&p, c).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*m)).unwrap();
            }
            Op::Dir(p, m) => {
                let p = at(root, p);
                std::fs::create_dir_all(&p).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*m)).unwrap();
            }
            Op::RemoveAll(p) => {
                let p = at(root, p);
                if p.is_dir() && !p.is_symlink() {
                    std::fs::remove_dir_all(&p).unwrap();
                } else {
                    let _ = std::fs::remove_file(&p);
                }
            }
            Op::Chown(p, u, g) => {
                std::os::unix::fs::lchown(at(root, p), Some(*u), Some(*g)).unwrap()
            }
            Op::Link(a, b) => std::fs::hard_link(at(root, a), at(root, b)).unwrap(),
            Op::Rename(a, b) => std::fs::rename(at(root, a), at(root, b)).unwrap(),
        }
    }
}

fn code(r: Result<impl std::fmt::Debug, tonic::Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

#[test]
fn basic() {
    let Some(mut s) = Suite::new("basic", "auto") else {
        return;
    };
    let initial = vec![
        Op::File("/foo", "foo\n", 0o777),
        Op::Dir("/a", 0o755),
        Op::Dir("/a/b", 0o755),
        Op::Dir("/a/b/c", 0o755),
    ];
    let diff = vec![
        Op::File("/bar", "bar\n", 0o777),
        Op::File("/foo", "bar\n", 0o777),
        Op::RemoveAll("/a/b"),
    ];
    let mounts = s.c.prepare("preparing", "", gc_root()).unwrap();
    assert!(!mounts.is_empty());
    s.prepare_and("unused", "", |_| {});
    let mp = s.fresh_dir("mnt");
    let g = mount_all(&s.ns, &mounts, &mp).unwrap();
    apply(&mp, &initial);
    g.unmount();
    s.c.commit("committed", "preparing", gc_root()).unwrap();
    let si = s.c.stat("committed").unwrap();
    assert_eq!((si.parent.as_str(), si.kind), ("", 3));
    assert_eq!(code(s.c.stat("preparing")), Code::NotFound);

    let expect_initial = s.fresh_dir("flat");
    apply(&expect_initial, &initial);
    let mounts = s.c.prepare("nextlayer", "committed", gc_root()).unwrap();
    let mp = s.fresh_dir("mnt");
    let g = mount_all(&s.ns, &mounts, &mp).unwrap();
    assert_eq!(manifest(&s.ns, &expect_initial), manifest(&s.ns, &mp));
    apply(&mp, &diff);
    g.unmount();
    let ni = s.c.stat("nextlayer").unwrap();
    assert_eq!((ni.parent.as_str(), ni.kind), ("committed", 2));
    s.c.commit("committed-next", "nextlayer", gc_root())
        .unwrap();
    let si2 = s.c.stat("committed-next").unwrap();
    assert_eq!((si2.parent.as_str(), si2.kind), ("committed", 3));
    assert_eq!(code(s.c.stat("nextlayer")), Code::NotFound);
    let walked: HashMap<String, _> =
        s.c.list(&[])
            .unwrap()
            .into_iter()
            .map(|i| (i.name.clone(), i))
            .collect();
    assert_eq!(walked["committed"], si);
    assert_eq!(walked["committed-next"], si2);

    let mounts =
        s.c.view("nextnextlayer", "committed-next", gc_root())
            .unwrap();
    let mp = s.fresh_dir("mnt");
    let g = mount_all(&s.ns, &mounts, &mp).unwrap();
    apply(&expect_initial, &diff);
    assert_eq!(manifest(&s.ns, &expect_initial), manifest(&s.ns, &mp));
    g.unmount();
    s.c.remove("nextnextlayer").unwrap();
    let e = s.c.remove("committed").unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("remove"), "{}", e.message());
    s.c.remove("committed-next").unwrap();
    s.c.remove("committed").unwrap();
}

#[test]
fn stat_active_and_committed() {
    let Some(mut s) = Suite::new("stat_active_and_committed", "auto") else {
        return;
    };
    s.prepare_and("preparing", "", |mp| {
        std::fs::write(mp.join("foo"), "foo\n").unwrap()
    });
    let si = s.c.stat("preparing").unwrap();
    assert_eq!(
        (si.name.as_str(), si.kind, si.parent.as_str()),
        ("preparing", 2, "")
    );
    s.c.commit("committed", "preparing", gc_root()).unwrap();
    let si = s.c.stat("committed").unwrap();
    assert_eq!(
        (si.name.as_str(), si.kind, si.parent.as_str()),
        ("committed", 3, "")
    );
}

#[test]
fn transitivity() {
    let Some(mut s) = Suite::new("transitivity", "auto") else {
        return;
    };
    s.prepare_and("preparing", "", |mp| {
        std::fs::write(mp.join("foo"), "foo\n").unwrap()
    });
    s.c.commit("snapA", "preparing", gc_root()).unwrap();
    s.prepare_and("next", "snapA", |mp| {
        std::fs::write(mp.join("foo"), "foo bar\n").unwrap()
    });
    s.c.commit("snapB", "next", gc_root()).unwrap();
    let a = s.c.stat("snapA").unwrap();
    let b = s.c.stat("snapB").unwrap();
    let pb = s.c.stat(&b.parent).unwrap();
    assert_eq!(a.parent, "");
    assert_eq!(b.parent, "snapA");
    assert_eq!(pb.parent, "");
}

#[test]
fn prepare_and_view_with_a_taken_key_fail() {
    let Some(mut s) = Suite::new("prepare_and_view_with_a_taken_key_fail", "auto") else {
        return;
    };
    s.prepare_and("preparing", "", |_| {});
    s.c.commit("snapA", "preparing", gc_root()).unwrap();
    s.c.prepare("newlayer", "snapA", gc_root()).unwrap();
    assert_eq!(
        code(s.c.view("newlayer", "snapA", gc_root())),
        Code::AlreadyExists
    );
    s.c.prepare("prepLayer", "snapA", gc_root()).unwrap();
    assert_eq!(
        code(s.c.prepare("prepLayer", "snapA", gc_root())),
        Code::AlreadyExists
    );
    s.c.view("viewLayer", "snapA", gc_root()).unwrap();
    assert_eq!(
        code(s.c.view("viewLayer", "snapA", gc_root())),
        Code::AlreadyExists
    );
}

#[test]
fn update_labels_and_field_paths() {
    let Some(mut s) = Suite::new("update_labels_and_field_paths", "auto") else {
        return;
    };
    let t1 = std::time::SystemTime::now();
    s.c.prepare("c1-a", "", gc_root()).unwrap();
    s.c.commit("c1", "c1-a", gc_root()).unwrap();
    s.c.prepare("c2-a", "c1", gc_root()).unwrap();
    s.c.commit("c2", "c2-a", gc_root()).unwrap();
    s.c.prepare("a1", "c2", gc_root()).unwrap();
    s.c.prepare("a2", "", gc_root()).unwrap();
    s.c.view("v1", "c2", gc_root()).unwrap();
    s.c.view("v2", "", gc_root()).unwrap();
    let t2 = std::time::SystemTime::now();
    let ts = |t: &Option<prost_types::Timestamp>| -> std::time::SystemTime {
        t.clone().unwrap().try_into().unwrap()
    };
    let root = gc_root();
    let root_v = root["containerd.io/gc.root"].clone();
    for (name, kind, parent) in [
        ("c1", 3, ""),
        ("c2", 3, "c1"),
        ("a1", 2, "c2"),
        ("a2", 2, ""),
        ("v1", 1, "c2"),
        ("v2", 1, ""),
    ] {
        let mut st = s.c.stat(name).unwrap();
        let created = ts(&st.created_at);
        assert!(
            created >= t1 && created <= t2,
            "{name}: created {created:?}"
        );
        assert_eq!(st.created_at, st.updated_at, "{name}");
        assert_eq!(
            (st.kind, st.parent.as_str(), st.name.as_str()),
            (kind, parent, name)
        );
        let expected = labels(&[
            ("l1", "v1"),
            ("l2", "v2"),
            ("l3", "v3"),
            ("containerd.io/gc.root", &root_v),
        ]);
        st.parent = "doesnotexist".into();
        st.labels = expected.clone();
        let u1 = std::time::SystemTime::now();
        let st2 = s.c.update(st, &[]).unwrap();
        let u2 = std::time::SystemTime::now();
        assert_eq!(ts(&st2.created_at), created, "{name}");
        let updated = ts(&st2.updated_at);
        assert!(updated >= u1 && updated <= u2, "{name}");
        assert_eq!(
            (st2.kind, st2.parent.as_str(), st2.name.as_str()),
            (kind, parent, name)
        );
        assert_eq!(st2.labels, expected, "{name}");

        let mut st3 = st2.clone();
        st3.labels = labels(&[("l1", "updated"), ("l4", "v4")]);
        let st3 = s.c.update(st3, &["labels.l1", "labels.l2"]).unwrap();
        assert_eq!(
            st3.labels,
            labels(&[
                ("l1", "updated"),
                ("l3", "v3"),
                ("containerd.io/gc.root", &root_v)
            ]),
            "{name}"
        );
        let mut st4 = st3.clone();
        let expected = labels(&[("l4", "v4"), ("containerd.io/gc.root", &root_v)]);
        st4.labels = expected.clone();
        let st4 = s.c.update(st4, &["labels"]).unwrap();
        assert_eq!(st4.labels, expected, "{name}");
        let mut st5 = st4.clone();
        st5.parent = "doesnotexist".into();
        assert_eq!(code(s.c.update(st5, &["parent"])), Code::InvalidArgument);
        assert_eq!(s.c.stat(name).unwrap().labels, expected);
    }
    let mut missing = s.c.stat("c1").unwrap();
    missing.name = "missing".into();
    assert_eq!(code(s.c.update(missing, &[])), Code::NotFound);
}

#[test]
fn remove_frees_the_key() {
    let Some(mut s) = Suite::new("remove_frees_the_key", "auto") else {
        return;
    };
    s.c.prepare("committed-a", "", gc_root()).unwrap();
    s.c.commit("committed-1", "committed-a", gc_root()).unwrap();
    s.c.prepare("reuse-1", "committed-1", gc_root()).unwrap();
    s.c.remove("reuse-1").unwrap();
    s.c.view("reuse-1", "committed-1", gc_root()).unwrap();
    s.c.remove("reuse-1").unwrap();
    s.c.prepare("reuse-1", "", gc_root()).unwrap();
    s.c.remove("committed-1").unwrap();
    s.c.commit("committed-1", "reuse-1", gc_root()).unwrap();
    assert_eq!(code(s.c.remove("nothing")), Code::NotFound);
}

#[test]
fn walk_with_containerd_filters() {
    let Some(mut s) = Suite::new("walk_with_containerd_filters", "auto") else {
        return;
    };
    let gc = || labels(&[("containerd.io/gc.root", "check-walk")]);
    let gcl = |l: &str| labels(&[("containerd.io/gc.root", "check-walk"), ("l", l)]);
    s.c.prepare("a-np", "", gc()).unwrap();
    s.c.prepare("p-tmp", "", gc()).unwrap();
    s.c.commit("p", "p-tmp", gc()).unwrap();
    s.c.prepare("a", "p", gc()).unwrap();
    s.c.view("v", "p", gc()).unwrap();
    s.c.prepare("p-wl-tmp", "", gc()).unwrap();
    s.c.commit("p-wl", "p-wl-tmp", gcl("1")).unwrap();
    s.c.prepare("a-wl", "p-wl", gcl("2")).unwrap();
    s.c.view("v-wl", "p-wl", gcl("3")).unwrap();
    s.c.prepare("a-np-wl", "", gcl("2")).unwrap();
    for (i, (matches, filters)) in [
        (
            vec!["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"],
            vec![r#"labels."containerd.io/gc.root"==check-walk"#],
        ),
        (
            vec!["a-np", "a", "a-wl", "a-np-wl"],
            vec![r#"kind==active,labels."containerd.io/gc.root"==check-walk"#],
        ),
        (
            vec!["v", "v-wl"],
            vec![r#"kind==view,labels."containerd.io/gc.root"==check-walk"#],
        ),
        (
            vec!["p", "p-wl"],
            vec![r#"kind==committed,labels."containerd.io/gc.root"==check-walk"#],
        ),
        (vec!["p", "a-np-wl"], vec!["name==p", "name==a-np-wl"]),
        (vec!["a-wl"], vec!["name==a-wl,labels.l"]),
        (vec!["a", "v"], vec!["parent==p"]),
        (
            vec!["a", "v", "a-wl", "v-wl"],
            vec![r#"parent!="",labels."containerd.io/gc.root"==check-walk"#],
        ),
        (vec!["p-wl", "a-wl", "v-wl", "a-np-wl"], vec!["labels.l"]),
        (vec!["a-wl", "a-np-wl"], vec!["labels.l==2"]),
        (vec!["a-wl", "a-np-wl", "a-np"], vec!["name~=^a-(np|wl)"]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut got: Vec<String> =
            s.c.list(&filters)
                .unwrap()
                .into_iter()
                .map(|i| i.name)
                .collect();
        got.sort();
        let mut want: Vec<String> = matches.iter().map(|m| m.to_string()).collect();
        want.sort();
        assert_eq!(got, want, "[{i}] filters {filters:?}");
    }
    assert_eq!(code(s.c.list(&["kind=="])), Code::InvalidArgument);
    // StatInWalk: every walked info equals its Stat.
    for i in s.c.list(&[]).unwrap() {
        assert_eq!(s.c.stat(&i.name).unwrap(), i);
    }
}

fn layer_content_checks(test: &str, backend: &'static str) {
    let Some(mut s) = Suite::new(test, backend) else {
        return;
    };
    // LayerFileUpdate
    s.check_snapshots(&[
        vec![
            Op::Dir("/etc", 0o700),
            Op::File("/etc/hosts", "mydomain 10.0.0.1", 0o644),
            Op::File("/etc/profile", "PATH=/usr/bin", 0o644),
        ],
        vec![
            Op::File("/etc/hosts", "mydomain 10.0.0.2", 0o644),
            Op::File("/etc/profile", "PATH=/usr/bin", 0o666),
            Op::Dir("/root", 0o700),
            Op::File("/root/.bashrc", "PATH=/usr/sbin:/usr/bin", 0o644),
        ],
    ]);
    // RemoveDirectoryInLowerLayer
    s.check_snapshots(&[
        vec![Op::Dir("/lib", 0o700), Op::File("/lib/hidden", "", 0o644)],
        vec![
            Op::RemoveAll("/lib"),
            Op::Dir("/lib", 0o700),
            Op::File("/lib/not-hidden", "", 0o644),
        ],
        vec![Op::File("/lib/newfile", "", 0o644)],
    ]);
    // Chown
    s.check_snapshots(&[
        vec![
            Op::Dir("/opt", 0o700),
            Op::Dir("/opt/a", 0o700),
            Op::Dir("/opt/a/b", 0o700),
            Op::File("/opt/a/b/file.txt", "hello", 0o644),
        ],
        vec![
            Op::Chown("/opt", 1, 1),
            Op::Chown("/opt/a", 1, 1),
            Op::Chown("/opt/a/b", 1, 1),
            Op::Chown("/opt/a/b/file.txt", 1, 1),
        ],
    ]);
    // DirectoryPermissionOnCommit
    s.check_snapshots(&[
        vec![
            Op::Dir("/dir1", 0o700),
            Op::Dir("/dir2", 0o700),
            Op::Dir("/dir3", 0o700),
            Op::Dir("/dir4", 0o700),
            Op::File("/dir4/f1", "...", 0o644),
            Op::Dir("/dir5", 0o700),
            Op::File("/dir5/f1", "...", 0o644),
            Op::Chown("/dir1", 1, 1),
            Op::Chown("/dir2", 1, 1),
            Op::Chown("/dir3", 1, 1),
            Op::Chown("/dir5", 1, 1),
            Op::Chown("/dir5/f1", 1, 1),
        ],
        vec![
            Op::Chown("/dir2", 0, 0),
            Op::RemoveAll("/dir3"),
            Op::Chown("/dir4", 1, 1),
            Op::Chown("/dir4/f1", 1, 1),
        ],
        vec![
            Op::Dir("/dir3", 0o700),
            Op::Chown("/dir3", 1, 1),
            Op::RemoveAll("/dir5"),
            Op::Dir("/dir5", 0o700),
            Op::Chown("/dir5", 1, 1),
        ],
    ]);
    // DeletedFilesInChildSnapshot
    s.check_snapshots(&[
        vec![
            Op::File("/foo", "foo\n", 0o777),
            Op::File("/foobar", "foobar\n", 0o777),
        ],
        vec![Op::RemoveAll("/foobar")],
        vec![],
    ]);
    // MoveFileFromLowerLayer
    s.check_snapshots(&[
        vec![
            Op::Dir("/dir1", 0o700),
            Op::File("/dir1/f1", "Hello", 0o644),
            Op::Dir("dir2", 0o700),
            Op::File("dir2/f2", "...", 0o644),
        ],
        vec![
            Op::Dir("/dir3", 0o700),
            Op::File("/dir3/f1", "Hello", 0o644),
            Op::RemoveAll("/dir1"),
            Op::Link("dir2/f2", "dir3/f2"),
            Op::RemoveAll("dir2/f2"),
        ],
    ]);
    // Rename (overlayfs's variant: no directory rename across layers)
    s.check_snapshots(&[
        vec![
            Op::Dir("/dir1", 0o700),
            Op::Dir("/somefiles", 0o700),
            Op::File("/somefiles/f1", "was here first!", 0o644),
            Op::File("/somefiles/f2", "nothing interesting", 0o644),
        ],
        vec![
            Op::File("/somefiles/f1-overwrite", "new content 1", 0o644),
            Op::Rename("/somefiles/f1-overwrite", "/somefiles/f1"),
            Op::Rename("/somefiles/f2", "/somefiles/f3"),
        ],
    ]);
}

#[test]
fn layer_contents_kernel() {
    layer_content_checks("layer_contents_kernel", "auto");
}

#[test]
fn layer_contents_fuse() {
    layer_content_checks("layer_contents_fuse", "fuse");
}

#[test]
fn remove_intermediate_snapshot_fails() {
    let Some(mut s) = Suite::new("remove_intermediate_snapshot_fails", "auto") else {
        return;
    };
    s.prepare_and("base", "", |_| {});
    s.c.commit("committed-base", "base", gc_root()).unwrap();
    s.c.prepare("intermediate", "committed-base", gc_root())
        .unwrap();
    s.c.commit("committed-inter", "intermediate", gc_root())
        .unwrap();
    s.c.prepare("toplayer", "committed-inter", gc_root())
        .unwrap();
    assert_eq!(
        code(s.c.remove("committed-inter")),
        Code::FailedPrecondition
    );
    s.c.remove("toplayer").unwrap();
    s.c.remove("committed-inter").unwrap();
    s.c.remove("committed-base").unwrap();
}

#[test]
fn views_are_read_only_and_roots_0755() {
    let Some(mut s) = Suite::new("views_are_read_only_and_roots_0755", "auto") else {
        return;
    };
    s.c.prepare("preparing", "", gc_root()).unwrap();
    s.c.commit("committed", "preparing", gc_root()).unwrap();
    s.c.prepare("p2", "committed", gc_root()).unwrap();
    s.c.commit("committed2", "p2", gc_root()).unwrap();
    // One layer (a bind mount) and two (an overlay without upper).
    for parent in ["committed", "committed2"] {
        let view = format!("view-{parent}");
        let m = s.c.view(&view, parent, gc_root()).unwrap();
        let mp = s.fresh_dir("view");
        let g = mount_all(&s.ns, &m, &mp).unwrap();
        let w = std::fs::write(mp.join("testfile"), "testcontent");
        g.unmount();
        assert!(w.is_err(), "a write to view {view} succeeded");
        s.c.remove(&view).unwrap();
    }
    // RootPermission: a fresh snapshot's root is 0755 whatever the umask.
    let m = s.c.prepare("rootperm", "", gc_root()).unwrap();
    let mp = s.fresh_dir("mnt");
    let g = mount_all(&s.ns, &m, &mp).unwrap();
    let mode = std::fs::metadata(&mp).unwrap().permissions().mode() & 0o777;
    g.unmount();
    assert_eq!(mode, 0o755);
}

#[test]
fn errors_carry_the_codes_containerd_acts_on() {
    let Some(mut s) = Suite::new("errors_carry_the_codes_containerd_acts_on", "auto") else {
        return;
    };
    assert_eq!(code(s.c.stat("nothing")), Code::NotFound);
    assert_eq!(code(s.c.mounts("nothing")), Code::NotFound);
    assert_eq!(code(s.c.usage("nothing")), Code::NotFound);
    assert_eq!(code(s.c.prepare("x", "nothing", gc_root())), Code::NotFound);
    assert_eq!(code(s.c.commit("y", "nothing", gc_root())), Code::NotFound);
    s.c.prepare("a", "", gc_root()).unwrap();
    assert_eq!(
        code(s.c.prepare("x", "a", gc_root())),
        Code::InvalidArgument
    );
    assert_eq!(code(s.c.prepare("", "", gc_root())), Code::InvalidArgument);
    s.c.commit("c", "a", gc_root()).unwrap();
    assert_eq!(code(s.c.mounts("c")), Code::FailedPrecondition);
    s.c.view("v", "c", gc_root()).unwrap();
    assert_eq!(
        code(s.c.commit("c2", "v", gc_root())),
        Code::FailedPrecondition
    );
    s.c.prepare("b", "c", gc_root()).unwrap();
    assert_eq!(code(s.c.commit("c", "b", gc_root())), Code::AlreadyExists);
    let big = "x".repeat(5000);
    assert_eq!(
        code(s.c.prepare("z", "", labels(&[("k", &big)]))),
        Code::InvalidArgument
    );
    // The failed calls left nothing behind.
    s.c.cleanup().unwrap();
    assert_eq!(
        std::fs::read_dir(s.d.root.join("snapshots"))
            .unwrap()
            .count(),
        3
    );
}

#[test]
fn usage_is_the_snapshots_own_layer() {
    let Some(mut s) = Suite::new("usage_is_the_snapshots_own_layer", "auto") else {
        return;
    };
    s.prepare_and("base", "", |mp| {
        std::fs::write(mp.join("big"), vec![7u8; 4 << 20]).unwrap()
    });
    s.c.commit("base-c", "base", gc_root()).unwrap();
    let (size, inodes) = s.c.usage("base-c").unwrap();
    assert!(size >= 4 << 20, "{size}");
    assert_eq!(inodes, 2);
    s.prepare_and("top", "base-c", |mp| {
        std::fs::write(mp.join("small"), vec![1u8; 100_000]).unwrap();
        std::fs::create_dir(mp.join("d")).unwrap();
    });
    let (size, inodes) = s.c.usage("top").unwrap();
    assert!((100_000..4 << 20).contains(&size), "{size}");
    assert_eq!(inodes, 3);
}

#[test]
fn mount_choice_is_labelled_and_orphans_are_cleaned() {
    let Some(mut s) = Suite::new("mount_choice_is_labelled_and_orphans_are_cleaned", "auto") else {
        return;
    };
    s.c.prepare("a", "", gc_root()).unwrap();
    s.c.commit("c", "a", gc_root()).unwrap();
    s.c.prepare("b", "c", gc_root()).unwrap();
    let st = s.c.stat("b").unwrap();
    assert_eq!(st.labels["containerd.io/snapshot/ovl.mount"], "kernel");
    assert!(st.labels["containerd.io/snapshot/ovl.mount-reason"].contains("kernel overlay"));
    assert!(s.d.log_text().contains("prepare b: kernel overlay"));
    let snaps = s.d.root.join("snapshots");
    std::fs::create_dir_all(snaps.join("new-orphan/fs/x")).unwrap();
    std::fs::create_dir_all(snaps.join("9999/work/work")).unwrap();
    std::fs::set_permissions(
        snaps.join("9999/work/work"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    s.c.cleanup().unwrap();
    let mut left: Vec<String> = std::fs::read_dir(&snaps)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, vec!["1", "2"]);
}

/// containerd's 128LayersMount: 128 layers overwrite, add and replace files; every prepared
/// mount equals a flat directory with the same changes, and so does a view of the top.
#[test]
fn mount_128_layers() {
    let Some(mut s) = Suite::new("mount_128_layers", "auto") else {
        return;
    };
    let flat = s.fresh_dir("flat");
    let mut parent = String::new();
    for i in 0..128 {
        let ops: Vec<Op> = if i == 0 {
            vec![
                Op::File("/bottom", "way at the bottom\n", 0o777),
                Op::File("/overwriteme", "FIRST!\n", 0o777),
                Op::Dir("/addhere", 0o755),
                Op::Dir("/onlyme", 0o755),
                Op::File("/onlyme/bottom", "bye!\n", 0o777),
            ]
        } else {
            let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
            vec![
                Op::File("/overwriteme", leak(format!("{i} WAS HERE!\n")), 0o777),
                Op::File(leak(format!("/addhere/file-{i}")), "same\n", 0o755),
                Op::RemoveAll("/onlyme"),
                Op::Dir("/onlyme", 0o755),
                Op::File(leak(format!("/onlyme/file-{i}")), "only me!\n", 0o777),
            ]
        };
        let key = format!("prepare-layer-{i}");
        let m = s.c.prepare(&key, &parent, gc_root()).unwrap();
        let mp = s.fresh_dir("mnt");
        let g = mount_all(&s.ns, &m, &mp).unwrap();
        let check = i % 32 == 31;
        if check {
            assert_eq!(manifest(&s.ns, &flat), manifest(&s.ns, &mp), "layer {i}");
        }
        apply(&flat, &ops);
        apply(&mp, &ops);
        if check {
            assert_eq!(manifest(&s.ns, &flat), manifest(&s.ns, &mp), "layer {i}");
        }
        g.unmount();
        parent = format!("committed-{i}");
        s.c.commit(&parent, &key, gc_root()).unwrap();
    }
    let m = s.c.view("fullview", &parent, gc_root()).unwrap();
    assert_eq!(
        m[0].r#type, "overlay",
        "128 layers fit the kernel's options"
    );
    let mp = s.fresh_dir("view");
    let g = mount_all(&s.ns, &m, &mp).unwrap();
    assert_eq!(manifest(&s.ns, &flat), manifest(&s.ns, &mp));
    g.unmount();
}

/// The layer directory a prepared snapshot writes to (what containerd's applier writes to
/// directly for overlay mounts): the bind source, or the `upperdir=`.
fn upper_of(m: &[containerd_snapshots::api::types::Mount]) -> PathBuf {
    let m = &m[0];
    if m.r#type == "bind" {
        return PathBuf::from(&m.source);
    }
    m.options
        .iter()
        .find_map(|o| o.strip_prefix("upperdir="))
        .map(PathBuf::from)
        .expect("an active overlay has an upperdir")
}

/// A chain of 600 snapshots (`OVL_CHAIN` for more): the kernel overlay takes 500 lowers,
/// beyond that the mounts are `ovl-fuse`'s, with the reason in the labels; both mount and
/// show every layer.
#[test]
fn chain_of_600_snapshots() {
    let Some(mut s) = Suite::new("chain_of_600_snapshots", "auto") else {
        return;
    };
    let n: usize = std::env::var("OVL_CHAIN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600)
        .max(502);
    let mut parent = String::new();
    for i in 0..n {
        let key = format!("a{i}");
        let m = s.c.prepare(&key, &parent, HashMap::new()).unwrap();
        let want = match i {
            0 => "bind",
            1..=500 => "overlay",
            _ => "fuse3.ovl-fuse",
        };
        assert_eq!(m[0].r#type, want, "prepare over {i} layers");
        let up = upper_of(&m);
        if i == 0 {
            std::fs::create_dir(up.join("layers")).unwrap();
        }
        std::fs::write(up.join("shared"), format!("{i}")).unwrap();
        if i > 0 {
            let _ = std::fs::create_dir(up.join("layers"));
        }
        std::fs::write(up.join(format!("layers/{i}")), "x").unwrap();
        parent = format!("c{i}");
        s.c.commit(&parent, &key, HashMap::new()).unwrap();
    }
    for (layers, want) in [(500, "overlay"), (n, "fuse3.ovl-fuse")] {
        let view = format!("v{layers}");
        let m =
            s.c.view(&view, &format!("c{}", layers - 1), HashMap::new())
                .unwrap();
        assert_eq!(m[0].r#type, want, "view of {layers} layers");
        let st = s.c.stat(&view).unwrap();
        if want != "overlay" {
            assert!(
                st.labels["containerd.io/snapshot/ovl.mount-reason"]
                    .contains(&format!("{layers} lower layers")),
                "{:?}",
                st.labels
            );
        }
        let mp = s.fresh_dir("view");
        let g = mount_all(&s.ns, &m, &mp).unwrap();
        assert_eq!(
            std::fs::read_to_string(mp.join("shared")).unwrap(),
            format!("{}", layers - 1)
        );
        assert_eq!(
            std::fs::read_dir(mp.join("layers")).unwrap().count(),
            layers
        );
        g.unmount();
    }
}

/// `kill -9` while a client prepares, writes, commits and removes as fast as it can, three
/// times over: after each restart every snapshot listed is whole (each committed one mounts
/// and shows its file), and after Cleanup the directories are exactly the snapshots'.
#[test]
fn kill9_during_calls_leaves_a_consistent_store() {
    let Some(mut s) = Suite::new("kill9_during_calls_leaves_a_consistent_store", "auto") else {
        return;
    };
    let mut committed = 0usize;
    for round in 0..3 {
        let sock = s.d.sock.clone();
        let start = committed;
        let worker = std::thread::spawn(move || {
            let mut c = Client::connect(&sock);
            let mut n = start;
            loop {
                let parent = if n == 0 {
                    String::new()
                } else {
                    format!("c{}", n - 1)
                };
                let key = format!("a{n}-{round}");
                let Ok(m) = c.prepare(&key, &parent, HashMap::new()) else {
                    return n;
                };
                if std::fs::write(upper_of(&m).join(format!("f{n}")), "x").is_err() {
                    return n;
                }
                if c.commit(&format!("c{n}"), &key, HashMap::new()).is_err() {
                    return n;
                }
                n += 1;
                // A view made and removed now and then.
                if n % 3 == 0 {
                    let v = format!("v{n}-{round}");
                    if c.view(&v, &format!("c{}", n - 1), HashMap::new()).is_err()
                        || c.remove(&v).is_err()
                    {
                        return n;
                    }
                }
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(150 + 170 * round as u64));
        s.d.kill9();
        let _ = worker.join().unwrap();
        s.d.restart();
        s.c = s.d.client();
        s.c.cleanup().unwrap();
        let all = s.c.list(&[]).unwrap();
        let dirs = std::fs::read_dir(s.d.root.join("snapshots"))
            .unwrap()
            .count();
        assert_eq!(dirs, all.len(), "round {round}: directories vs snapshots");
        // The chain of committed snapshots is unbroken: c0..c(k-1).
        committed = all.iter().filter(|i| i.kind == 3).count();
        for i in 0..committed {
            assert!(
                all.iter().any(|x| x.name == format!("c{i}")),
                "round {round}: c{i} missing"
            );
        }
        // Actives left by the interrupted call are the caller's to remove, as containerd
        // does after a failed unpack.
        for i in all.iter().filter(|i| i.kind != 3) {
            s.c.remove(&i.name).unwrap();
        }
        if committed > 0 {
            let top = format!("c{}", committed - 1);
            let m = s.c.view("check", &top, HashMap::new()).unwrap();
            let mp = s.fresh_dir("view");
            let g = mount_all(&s.ns, &m, &mp).unwrap();
            for i in 0..committed {
                assert!(mp.join(format!("f{i}")).exists(), "round {round}: f{i}");
            }
            g.unmount();
            s.c.remove("check").unwrap();
        }
    }
    assert!(committed > 0, "no snapshot was committed before the kills");
}

/// A second snapshotter on the same root is refused with a clear error (the database is
/// locked), and one on another root cannot take over a socket someone serves.
#[test]
fn a_second_instance_is_refused() {
    let Some(s) = Suite::new("a_second_instance_is_refused", "auto") else {
        return;
    };
    let run = |root: &Path| {
        std::process::Command::new(BIN)
            .arg("--address")
            .arg(&s.d.sock)
            .arg("--root")
            .arg(root)
            .output()
            .unwrap()
    };
    let out = run(&s.d.root);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("metadata.redb"), "{err}");
    let other = s.work.join("other-root");
    let out = run(&other);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("another process serves it"), "{err}");
}
