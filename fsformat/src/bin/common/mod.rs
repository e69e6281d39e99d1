//! Pieces shared by the `neo-fs` and `fs-bench` binaries (each uses a
//! subset, hence the `dead_code` allowance).
#![allow(dead_code)]

pub mod copy;
pub mod pickle;
pub mod progress;
pub mod pyfmt;
