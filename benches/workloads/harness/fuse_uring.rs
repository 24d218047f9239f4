//! The kernel's switch for FUSE over io_uring, set for a benchmark run or a test and put back
//! as it was. The test crates include this file too.

use std::fs;

/// Whether the kernel offers FUSE over io_uring to the FUSE servers that ask for it.
const ENABLE_URING: &str = overlay_core::mount::probe::FUSE_URING_SWITCH;

/// The kernel's FUSE-over-io_uring switch, set for a run and put back as it was on drop.
#[derive(Debug)]
pub struct FuseUringSwitch {
    before: Option<String>,
    /// For the report: what the run had.
    pub state: String,
}

impl FuseUringSwitch {
    /// Set the switch to `want` (`None`: leave it) and describe the resulting state.
    pub fn apply(want: Option<bool>) -> FuseUringSwitch {
        let now = fs::read_to_string(ENABLE_URING).map(|s| s.trim().to_string());
        let Ok(now) = now else {
            return FuseUringSwitch {
                before: None,
                state: "FUSE over io_uring not in this kernel".into(),
            };
        };
        let mut before = None;
        let mut note = String::new();
        if let Some(on) = want {
            let value = if on { "Y" } else { "N" };
            if now != value {
                match fs::write(ENABLE_URING, value) {
                    Ok(()) => before = Some(now.clone()),
                    Err(e) => note = format!(" (could not be changed: {e})"),
                }
            }
        }
        let effective = fs::read_to_string(ENABLE_URING)
            .map(|s| s.trim().to_string())
            .unwrap_or(now);
        FuseUringSwitch {
            before,
            state: format!("FUSE over io_uring enable_uring={effective}{note}"),
        }
    }
}

impl FuseUringSwitch {
    /// Switch FUSE over io_uring on for as long as the guard lives; the state it is in
    /// instead when that cannot be done.
    pub fn on() -> Result<FuseUringSwitch, String> {
        let switch = FuseUringSwitch::apply(Some(true));
        if switch.state.ends_with("enable_uring=Y") {
            Ok(switch)
        } else {
            Err(switch.state.clone())
        }
    }
}

impl Drop for FuseUringSwitch {
    fn drop(&mut self) {
        if let Some(before) = &self.before {
            let _ = fs::write(ENABLE_URING, before);
        }
    }
}
