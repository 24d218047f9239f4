//! User and group ID translation between the layers and the mount (`uidmapping=`,
//! `gidmapping=`, `squash_to_root`, `squash_to_uid=`, `squash_to_gid=`).
//!
//! A mapping `A:B:LEN` says that the IDs `A..A+LEN` stored in the layers are shown through the
//! mount as `B..B+LEN` (fuse-overlayfs semantics): a file owned by layer uid `A+i` appears
//! owned by `B+i`, and a file created or chowned to `B+i` through the mount is stored as
//! `A+i`. Layer IDs outside every range show as the overflow ID 65534, like IDs unmapped in a
//! user namespace.

use crate::error::Error;

/// The ID shown for layer IDs that no range maps (the kernel's default `overflowuid`).
pub const OVERFLOW_ID: u32 = 65534;

/// One contiguous range of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// First ID as stored in the layers.
    pub layer: u32,
    /// First ID as shown through the mount.
    pub view: u32,
    /// Number of IDs in the range.
    pub len: u32,
}

/// A set of ID ranges; the empty mapping is the identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMapping {
    ranges: Vec<IdRange>,
}

impl IdMapping {
    /// The identity mapping.
    pub fn identity() -> Self {
        Self::default()
    }

    /// Build from ranges.
    pub fn from_ranges(ranges: Vec<IdRange>) -> Self {
        IdMapping { ranges }
    }

    /// Parse fuse-overlayfs syntax: `LAYER:VIEW:LEN[:LAYER2:VIEW2:LEN2...]` (a `,` between
    /// triplets is accepted as well).
    pub fn parse(option: &str, spec: &str) -> Result<Self, Error> {
        let parts: Vec<&str> = spec.split([':', ',']).filter(|s| !s.is_empty()).collect();
        if parts.is_empty() || !parts.len().is_multiple_of(3) {
            return Err(Error::Options(format!(
                "{option}={spec}: expected FROM:TO:LEN triplets"
            )));
        }
        let mut ranges = Vec::with_capacity(parts.len() / 3);
        for t in parts.chunks(3) {
            let num = |s: &str| {
                s.parse::<u32>()
                    .map_err(|_| Error::Options(format!("{option}={spec}: {s:?} is not an ID")))
            };
            let r = IdRange {
                layer: num(t[0])?,
                view: num(t[1])?,
                len: num(t[2])?,
            };
            if r.len == 0
                || r.layer.checked_add(r.len - 1).is_none()
                || r.view.checked_add(r.len - 1).is_none()
            {
                return Err(Error::Options(format!(
                    "{option}={spec}: range {}:{}:{} is empty or overflows",
                    r.layer, r.view, r.len
                )));
            }
            ranges.push(r);
        }
        Ok(IdMapping { ranges })
    }

    /// True for the identity mapping.
    pub fn is_identity(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ID shown through the mount for a layer ID.
    pub fn to_view(&self, layer: u32) -> u32 {
        if self.ranges.is_empty() {
            return layer;
        }
        self.ranges
            .iter()
            .find(|r| layer >= r.layer && layer - r.layer < r.len)
            .map(|r| r.view + (layer - r.layer))
            .unwrap_or(OVERFLOW_ID)
    }

    /// The layer ID for an ID given through the mount, `None` when no range covers it.
    pub fn to_layer(&self, view: u32) -> Option<u32> {
        if self.ranges.is_empty() {
            return Some(view);
        }
        self.ranges
            .iter()
            .find(|r| view >= r.view && view - r.view < r.len)
            .map(|r| r.layer + (view - r.view))
    }
}

/// The complete ID policy of a mount.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdPolicy {
    /// uid translation.
    pub uids: IdMapping,
    /// gid translation.
    pub gids: IdMapping,
    /// Show every file as owned by this uid (`squash_to_root`, `squash_to_uid=`).
    pub squash_uid: Option<u32>,
    /// Show every file as owned by this gid (`squash_to_root`, `squash_to_gid=`).
    pub squash_gid: Option<u32>,
}

impl IdPolicy {
    /// uid shown for a layer uid.
    pub fn view_uid(&self, layer: u32) -> u32 {
        self.squash_uid.unwrap_or_else(|| self.uids.to_view(layer))
    }

    /// gid shown for a layer gid.
    pub fn view_gid(&self, layer: u32) -> u32 {
        self.squash_gid.unwrap_or_else(|| self.gids.to_view(layer))
    }

    /// True when ownership is squashed, so chown through the mount is a no-op.
    pub fn squashes(&self) -> bool {
        self.squash_uid.is_some() || self.squash_gid.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_translate() {
        let m = IdMapping::parse("uidmapping", "0:1000:1:1:110000:65536").unwrap();
        assert_eq!(m.to_view(0), 1000);
        assert_eq!(m.to_view(1), 110000);
        assert_eq!(m.to_view(65536), 175535);
        assert_eq!(m.to_view(65537), OVERFLOW_ID);
        assert_eq!(m.to_layer(1000), Some(0));
        assert_eq!(m.to_layer(110005), Some(6));
        assert_eq!(m.to_layer(5), None);
        assert!(IdMapping::identity().to_layer(7) == Some(7));
    }

    #[test]
    fn parse_errors_name_the_option() {
        for bad in ["", "1:2", "a:b:c", "0:0:0", "4294967295:0:2"] {
            let e = IdMapping::parse("gidmapping", bad).unwrap_err().to_string();
            assert!(e.contains("gidmapping"), "{e}");
        }
    }

    #[test]
    fn squash_wins_over_mapping() {
        let p = IdPolicy {
            uids: IdMapping::parse("uidmapping", "0:1000:10").unwrap(),
            squash_uid: Some(0),
            ..IdPolicy::default()
        };
        assert_eq!(p.view_uid(3), 0);
        assert_eq!(p.view_gid(3), 3);
        assert!(p.squashes());
    }
}
