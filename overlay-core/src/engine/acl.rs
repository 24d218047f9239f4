//! POSIX ACL inheritance for objects the engine creates in the workdir.
//!
//! An object created directly in its upper directory inherits that directory's default ACL
//! from the upper filesystem. One created in `workdir/work` (to replace a whiteout
//! atomically) does not: like the kernel overlay (`posix_acl_create` on the overlay
//! directory, then the ACL xattrs set on the new upper object), the engine computes what the
//! object would have inherited and sets it.
//!
//! The xattr format is the kernel's `posix_acl_xattr`: a little-endian `u32` version (2),
//! then entries of `u16` tag, `u16` permissions, `u32` id.

/// `POSIX_ACL_XATTR_VERSION`.
const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// The default ACL xattr name.
pub(crate) const DEFAULT_ACL: &str = "system.posix_acl_default";
/// The access ACL xattr name.
pub(crate) const ACCESS_ACL: &str = "system.posix_acl_access";

/// What an object created with permission bits `mode` (0o777 part) in a directory whose
/// default ACL is `default_acl` gets, as the kernel's `posix_acl_create`: its permission
/// bits, and its access ACL when the ACL is not equivalent to the mode alone. `None` when
/// `default_acl` is not a valid ACL xattr.
pub(crate) fn inherit(default_acl: &[u8], mode: u32) -> Option<(u32, Option<Vec<u8>>)> {
    let (head, body) = default_acl.split_first_chunk::<4>()?;
    if u32::from_le_bytes(*head) != VERSION || body.is_empty() || body.len() % 8 != 0 {
        return None;
    }
    let mut entries: Vec<(u16, u16, u32)> = body
        .chunks_exact(8)
        .map(|e| {
            (
                u16::from_le_bytes([e[0], e[1]]),
                u16::from_le_bytes([e[2], e[3]]),
                u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            )
        })
        .collect();
    // posix_acl_create_masq.
    let mut m = mode & 0o777;
    let mut not_equiv = false;
    let (mut group_obj, mut mask) = (None, None);
    for (i, e) in entries.iter_mut().enumerate() {
        match e.0 {
            USER_OBJ => {
                e.1 &= ((m >> 6) & 7) as u16;
                m &= (u32::from(e.1) << 6) | !0o700;
            }
            USER | GROUP => not_equiv = true,
            GROUP_OBJ => group_obj = Some(i),
            OTHER => {
                e.1 &= (m & 7) as u16;
                m &= u32::from(e.1) | !0o007;
            }
            MASK => {
                mask = Some(i);
                not_equiv = true;
            }
            _ => return None,
        }
    }
    let g = mask.or(group_obj)?;
    entries[g].1 &= ((m >> 3) & 7) as u16;
    m &= (u32::from(entries[g].1) << 3) | !0o070;
    let access = not_equiv.then(|| {
        let mut out = VERSION.to_le_bytes().to_vec();
        for (tag, perm, id) in &entries {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&perm.to_le_bytes());
            out.extend_from_slice(&id.to_le_bytes());
        }
        out
    });
    Some((m & 0o777, access))
}

/// The xattr value of an ACL of `(tag, perm, id)` entries (`id` `u32::MAX` for the entries
/// that have none), for tests.
#[cfg(test)]
pub(crate) fn encode(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut out = VERSION.to_le_bytes().to_vec();
    for (t, p, i) in entries {
        out.extend_from_slice(&t.to_le_bytes());
        out.extend_from_slice(&p.to_le_bytes());
        out.extend_from_slice(&i.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        encode(entries)
    }

    const ANY: u32 = u32::MAX;

    #[test]
    fn minimal_default_acl_masks_the_mode() {
        // user::rwx group::r-x other::--- : like a umask of 027, and no access ACL.
        let d = acl(&[(USER_OBJ, 7, ANY), (GROUP_OBJ, 5, ANY), (OTHER, 0, ANY)]);
        assert_eq!(inherit(&d, 0o666), Some((0o640, None)));
        assert_eq!(inherit(&d, 0o777), Some((0o750, None)));
    }

    #[test]
    fn named_entries_give_an_access_acl_with_the_mask_from_the_mode() {
        // user::rwx user:65534:rwx group::r-x mask::rwx other::--- , created 0666:
        // mode 0660, access ACL with mask rw- (what ext4 gives, as checked on the kernel).
        let d = acl(&[
            (USER_OBJ, 7, ANY),
            (USER, 7, 65534),
            (GROUP_OBJ, 5, ANY),
            (MASK, 7, ANY),
            (OTHER, 0, ANY),
        ]);
        let want = acl(&[
            (USER_OBJ, 6, ANY),
            (USER, 7, 65534),
            (GROUP_OBJ, 5, ANY),
            (MASK, 6, ANY),
            (OTHER, 0, ANY),
        ]);
        assert_eq!(inherit(&d, 0o666), Some((0o660, Some(want))));
    }

    #[test]
    fn malformed_acls_are_refused() {
        assert_eq!(inherit(&[], 0o666), None);
        assert_eq!(inherit(&[1, 0, 0, 0, 1, 0, 7, 0, 0, 0, 0, 0], 0o666), None);
        assert_eq!(
            inherit(&acl(&[(USER_OBJ, 7, ANY), (OTHER, 0, ANY)]), 0o666),
            None
        );
        assert_eq!(inherit(&acl(&[(0x40, 7, ANY)]), 0o666), None);
    }
}
