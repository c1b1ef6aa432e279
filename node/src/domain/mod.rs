//! Domain types and their validation rules: resident IDs, division codes, dates, roles,
//! categories and the registry commands built from them.

pub mod division;
pub mod error;
pub mod fields;
pub mod id;
pub mod period;
pub mod person;

pub use division::Division;
pub use error::InvalidField;
pub use id::ResidentId;
pub use period::Period;
pub use person::{Category, MoveIn, MoveOut, Role, ServiceGiven};
