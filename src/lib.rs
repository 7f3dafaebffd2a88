//! ephemera: declarative debugging of running pods with ephemeral containers.

pub mod api_client;
pub mod controller;
pub mod crd;
pub mod debug_container;
pub mod ephemeral_api;
pub mod events;
pub mod first_report;
pub mod index;
pub mod injector;
pub mod leader;
pub mod memory;
pub mod metrics;
pub mod own_writes;
pub mod plugin;
pub mod pod_watch;
pub mod pods;
pub mod policy;
pub mod reads;
pub mod requester;
pub mod server;
pub mod status;
pub mod target;
pub mod telemetry;
pub mod validation;
pub mod wakes;

/// The version `--version` prints: the crate's version and the git revision it was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (revision ", env!("EPHEMERA_REVISION"), ")");
