//! The kernel features a differential case runs with (`redirect_dir`, `metacopy`,
//! `index`): the same setting for the kernel mount and for our backends.

use overlay_core::mount::RedirectDir;
use overlay_core::OverlayOptions;

/// One setting of the kernel's optional features, for both sides of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// `redirect_dir=on` (else `follow`, the kernel's default here).
    pub redirect_dir: bool,
    /// `metacopy=on` (needs `redirect_dir`).
    pub metacopy: bool,
    /// `index=on`: hard links to lower files survive copy-up. The fixture then has hard
    /// links in its lower layers (see [`crate::common::fixture`]).
    pub index: bool,
}

impl Features {
    /// The kernel's defaults on this machine (`redirect_dir=N` with
    /// `redirect_always_follow=Y`, i.e. `follow`; no metacopy, no index).
    pub const DEFAULTS: Features = Features {
        redirect_dir: false,
        metacopy: false,
        index: false,
    };
    /// Lower and merged directories can be renamed (`redirect_dir=on`).
    pub const REDIRECT: Features = Features {
        redirect_dir: true,
        metacopy: false,
        index: false,
    };
    /// Metadata-only copy-up too (`redirect_dir=on,metacopy=on`).
    pub const METACOPY: Features = Features {
        redirect_dir: true,
        metacopy: true,
        index: false,
    };
    /// Hard links to lower files survive copy-up (`index=on`), redirects followed only.
    pub const INDEX: Features = Features {
        redirect_dir: false,
        metacopy: false,
        index: true,
    };
    /// Everything on: `redirect_dir=on,metacopy=on,index=on`.
    pub const ALL: Features = Features {
        redirect_dir: true,
        metacopy: true,
        index: true,
    };

    /// The kernel mount options: every feature explicit, so that the result does not
    /// depend on the module's defaults; no xino and no uuid on the upper root.
    pub fn kernel_options(self) -> String {
        let r = if self.redirect_dir { "on" } else { "follow" };
        let m = if self.metacopy { "on" } else { "off" };
        let i = if self.index { "on" } else { "off" };
        format!("redirect_dir={r},index={i},metacopy={m},xino=off,uuid=null")
    }

    /// The engine's options for the same setting.
    pub fn engine_options(self) -> OverlayOptions {
        OverlayOptions {
            redirect_dir: if self.redirect_dir {
                RedirectDir::On
            } else {
                RedirectDir::Follow
            },
            metacopy: self.metacopy,
            index: self.index,
            ..OverlayOptions::default()
        }
    }

    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match (self.redirect_dir, self.metacopy, self.index) {
            (_, true, true) => "redirect_dir=on,metacopy=on,index=on",
            (_, true, false) => "redirect_dir=on,metacopy=on",
            (true, false, true) => "redirect_dir=on,index=on",
            (true, false, false) => "redirect_dir=on",
            (false, false, true) => "index=on",
            (false, false, false) => "defaults",
        }
    }
}
