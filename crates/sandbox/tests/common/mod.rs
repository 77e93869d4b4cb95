//! What the sandbox's integration tests share.

/// The `Seccomp:` mode of thread `tid` of this process (0 none, 2 filter), read by an unfiltered
/// thread.
pub fn seccomp_mode(tid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .unwrap()
        .trim()
        .to_owned()
}
