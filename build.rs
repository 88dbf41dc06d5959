//! Generates `include/balena_device.h` from the crate's source with cbindgen.
//!
//! The header is written to `$OUT_DIR` always, and copied to `include/` when
//! it changed, except under CI (`CI` set), where the committed header is left
//! alone so that a test can show it is stale.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=include/balena_device.h");
    println!("cargo:rerun-if-env-changed=CI");

    let mut config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("cbindgen.toml is readable");
    let version = |part: &str| env::var(format!("CARGO_PKG_VERSION_{part}")).unwrap();
    config.after_includes = Some(format!(
        "\n/* Library version, from Cargo.toml (equals bd_version()). */\n\
         #define BD_VERSION_MAJOR {}\n#define BD_VERSION_MINOR {}\n#define BD_VERSION_PATCH {}\n\
         #define BD_VERSION_STRING \"{}\"",
        version("MAJOR"),
        version("MINOR"),
        version("PATCH"),
        env::var("CARGO_PKG_VERSION").unwrap()
    ));

    let generated = out_dir.join("balena_device.h");
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the header")
        .write_to_file(&generated);

    if env::var_os("CI").is_none() {
        let committed = crate_dir.join("include").join("balena_device.h");
        let new = fs::read(&generated).unwrap();
        if fs::read(&committed).ok().as_deref() != Some(new.as_slice()) {
            fs::create_dir_all(committed.parent().unwrap()).unwrap();
            fs::write(&committed, new).unwrap();
        }
    }
}
