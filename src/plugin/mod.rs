//! The kubectl plugin's pure parts: its command line (kubectl's flag
//! conventions), target and selector syntax, and what it tells the user.
//! The plugin's IO lives in src/bin/kubectl-ephemera/.

pub mod cli;
pub mod report;
pub mod target;
