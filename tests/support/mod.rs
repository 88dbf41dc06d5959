//! Helpers shared by the tests that drive the built library from another
//! language (C, C++, Python).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The repository root.
pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>`: a test executable lives in `target/<profile>/deps`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot find the test executable's path");
    exe.parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("unexpected test executable path {}", exe.display()))
        .to_path_buf()
}

/// The cdylib built together with this test executable. `cargo test` builds
/// the library's crate types (cdylib, staticlib, rlib) in one rustc run into
/// `target/<profile>/deps` and does not copy the cdylib up to
/// `target/<profile>` (only `cargo build` does), so the copy up there may be
/// stale or missing: the one in `deps` matches the current sources.
pub fn built_cdylib() -> PathBuf {
    let profile = profile_dir();
    let candidates = [
        profile.join("deps/libbalena_device.so"),
        profile.join("libbalena_device.so"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "libbalena_device.so not found ({candidates:?}): it is built by `cargo test` \
                 and `cargo build` (crate-type \"cdylib\" in Cargo.toml)"
            )
        })
}
