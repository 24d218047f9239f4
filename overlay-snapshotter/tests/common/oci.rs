//! OCI image archives made by the tests: uncompressed layer tars (OCI whiteouts included),
//! config, manifest and index in an OCI layout, tarred for `ctr images import`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

/// One entry of a layer.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A directory with a mode.
    Dir(String, u32),
    /// A file with a mode and content.
    File(String, u32, Vec<u8>),
    /// A symlink and its target.
    Symlink(String, String),
    /// A hard link to an earlier path of the same layer.
    Hardlink(String, String),
    /// A whiteout of this path (`.wh.NAME`).
    Whiteout(String),
    /// This directory is opaque (`.wh..wh..opq`).
    Opaque(String),
}

/// A file entry.
pub fn file(path: &str, content: &str) -> Entry {
    Entry::File(path.into(), 0o644, content.as_bytes().to_vec())
}

/// A directory entry.
pub fn dir(path: &str) -> Entry {
    Entry::Dir(path.into(), 0o755)
}

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

/// The tar of one layer.
pub fn layer_tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let split = |p: &str| -> (String, String) {
        match p.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n.to_string()),
            None => (String::new(), p.to_string()),
        }
    };
    for e in entries {
        match e {
            Entry::Dir(p, m) => {
                let mut h = header(&format!("{p}/"), tar::EntryType::Directory, *m, 0);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            Entry::File(p, m, c) => {
                let mut h = header(p, tar::EntryType::Regular, *m, c.len() as u64);
                h.set_cksum();
                b.append(&h, c.as_slice()).unwrap();
            }
            Entry::Symlink(p, t) => {
                let mut h = header(p, tar::EntryType::Symlink, 0o777, 0);
                h.set_link_name(t).unwrap();
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            Entry::Hardlink(p, t) => {
                let mut h = header(p, tar::EntryType::Link, 0o644, 0);
                h.set_link_name(t).unwrap();
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            Entry::Whiteout(p) => {
                let (d, n) = split(p);
                let mut h = header(&format!("{d}.wh.{n}"), tar::EntryType::Regular, 0o644, 0);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            Entry::Opaque(p) => {
                let mut h = header(
                    &format!("{p}/.wh..wh..opq"),
                    tar::EntryType::Regular,
                    0o644,
                    0,
                );
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn sha256(b: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b);
    h.finalize().iter().map(|x| format!("{x:02x}")).collect()
}

/// containerd's platform name of this machine's architecture.
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        a => a,
    }
}

/// Write an OCI archive of image `name` (e.g. `docker.io/library/t:1`) with `layers`
/// (bottom first) to `out`. Returns the chain ids of the layers (the snapshot names
/// containerd uses), bottom first.
pub fn write_archive(out: &Path, name: &str, layers: &[Vec<Entry>]) -> Vec<String> {
    let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let t = layer_tar(l);
        let d = sha256(&t);
        layer_descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{d}"),
            "size": t.len(),
        }));
        diff_ids.push(format!("sha256:{d}"));
        blobs.insert(d, t);
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch(),
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let cd = sha256(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{cd}"),
            "size": config.len(),
        },
        "layers": layer_descs,
    }))
    .unwrap();
    let md = sha256(&manifest);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{md}"),
            "size": manifest.len(),
            "platform": {"architecture": arch(), "os": "linux"},
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap(),
            },
        }],
    }))
    .unwrap();
    blobs.insert(cd, config);
    blobs.insert(md, manifest);
    let f = std::fs::File::create(out).unwrap();
    let mut b = tar::Builder::new(f);
    let mut add = |path: &str, data: &[u8]| {
        let mut h = header(path, tar::EntryType::Regular, 0o644, data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", &index);
    for (d, data) in &blobs {
        add(&format!("blobs/sha256/{d}"), data);
    }
    b.into_inner().unwrap().flush().unwrap();
    // Chain ids: chain(0) = diff(0); chain(n) = sha256(chain(n-1) + " " + diff(n)).
    let mut chain: Vec<String> = Vec::new();
    for d in &diff_ids {
        let next = match chain.last() {
            None => d.clone(),
            Some(prev) => format!("sha256:{}", sha256(format!("{prev} {d}").as_bytes())),
        };
        chain.push(next);
    }
    chain
}
