//! The ids obhostctl makes up when the operator gives none.

/// A default step or DAG id: `<what>-<unix seconds>-<6 random hex digits>`.
/// The seconds keep ids sortable by when they were made; the suffix keeps two
/// made in the same second (two stops on two homes) from colliding, which the
/// daemon would refuse as ALREADY_EXISTS.
pub(crate) fn new_id(what: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    format!("{what}-{secs}-{:06x}", fastrand::u32(..0x100_0000))
}
