//! `balena_device`: a small client of the balena Supervisor's device API,
//! built as a C-ABI shared library (`libbalena_device.so`, header
//! `include/balena_device.h`) and usable from Rust directly.
//!
//! The Rust core ([`Client`], [`config`], [`lock`]) knows HTTP and the
//! supervisor; the [`ffi`] module only converts between it and C.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod api;
pub mod client;
pub mod config;
pub mod error;
pub mod ffi;
pub mod global;
pub mod json;
pub mod lock;
mod sync;

pub use api::{DeviceState, Service, ServiceAction, CURRENT_APP};
pub use client::Client;
pub use config::{Address, Config};
pub use error::{Error, ErrorKind, Result};

/// The header that the build generated from this crate's source (what
/// `include/balena_device.h` must equal).
#[doc(hidden)]
pub const GENERATED_HEADER: &str = include_str!(concat!(env!("OUT_DIR"), "/balena_device.h"));
