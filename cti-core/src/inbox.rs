//! The `Cti` facade. STUB.

/// Facade.
pub struct Cti;
/// Builder.
pub struct CtiBuilder;
/// Config.
pub struct CtiConfig;
