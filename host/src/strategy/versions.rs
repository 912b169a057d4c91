//! The `gyoza:scheduler` WIT versions this host speaks, and which plugin versions are
//! compatible with them.

/// The WIT package strategies implement.
pub const WIT_PACKAGE: &str = "gyoza:scheduler";
/// The newest version of it this host speaks: the one the SDK and the built-ins implement.
pub const WIT_VERSION: &str = "1.0.0";
/// Every version of it this host speaks, oldest first. A plugin of a compatible version (same
/// major version; for 0.x, same minor) of one of them loads.
pub const WIT_VERSIONS: [&str; 3] = ["0.1.0", "0.2.0", "1.0.0"];

/// (major, minor) of a version string.
fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut it = version.split(['.', '-', '+']);
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// The version in [`WIT_VERSIONS`] that a plugin's `gyoza:scheduler` version is compatible
/// with, as semver goes (same major version; for 0.x, same minor), if any.
pub(super) fn compatible(version: &str) -> Option<&'static str> {
    let theirs = major_minor(version)?;
    WIT_VERSIONS
        .into_iter()
        .find(|ours| match (theirs, major_minor(ours)) {
            ((0, minor), Some((0, our_minor))) => minor == our_minor,
            ((major, _), Some((our_major, _))) => major == our_major,
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compatible_by_semver() {
        assert_eq!(compatible("0.1.0"), Some("0.1.0"));
        assert_eq!(compatible("0.1.7"), Some("0.1.0"));
        assert_eq!(compatible("0.2.0"), Some("0.2.0"));
        assert_eq!(compatible("0.2.3-rc1"), Some("0.2.0"));
        assert_eq!(compatible("0.3.0"), None);
        assert_eq!(compatible("1.0.0"), Some("1.0.0"));
        assert_eq!(compatible("1.4.2"), Some("1.0.0"));
        assert_eq!(compatible("2.0.0"), None);
        assert_eq!(compatible(""), None);
    }
}
