//! One file per subcommand, each a thin `run()` over the framework.

pub mod doctor;
pub mod run;
pub mod validate;
