/// Name and version of the native core, so the daemon can check it loaded the addon it was built with.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_matches_the_workspace() {
        assert_eq!(super::version(), "0.1.0");
    }
}
