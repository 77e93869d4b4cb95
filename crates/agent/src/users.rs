//! Users from the guest's /etc/passwd, read directly (no NSS: the agent is static).

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// The user `who` (a name, or a numeric uid) in `passwd`.
pub fn lookup_in(passwd: &str, who: &str) -> Option<User> {
    let by_uid: Option<u32> = who.parse().ok();
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || line.starts_with('#') {
            return None;
        }
        let uid: u32 = f[2].parse().ok()?;
        let matches = f[0] == who || by_uid == Some(uid);
        matches.then(|| User {
            name: f[0].to_owned(),
            uid,
            gid: f[3].parse().unwrap_or(uid),
            home: if f[5].is_empty() {
                "/".into()
            } else {
                f[5].to_owned()
            },
            shell: if f[6].is_empty() {
                "/bin/sh".into()
            } else {
                f[6].to_owned()
            },
        })
    })
}

/// The user `who` in /etc/passwd.
pub fn lookup(who: &str) -> Option<User> {
    let passwd = std::fs::read_to_string(Path::new("/etc/passwd")).unwrap_or_default();
    lookup_in(&passwd, who)
}

/// The user the agent runs as: from /etc/passwd, or a bare one when it is not listed.
pub fn current() -> User {
    let uid = rustix::process::geteuid().as_raw();
    lookup(&uid.to_string()).unwrap_or(User {
        name: if uid == 0 { "root".into() } else { uid.to_string() },
        uid,
        gid: rustix::process::getegid().as_raw(),
        home: "/".into(),
        shell: "/bin/sh".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lines_by_name_and_uid() {
        let p = "root:x:0:0:root:/root:/bin/bash\n# comment\nbad line\ndebian:x:1000:1000::/home/debian:\n";
        assert_eq!(lookup_in(p, "debian").unwrap().shell, "/bin/sh");
        assert_eq!(lookup_in(p, "1000").unwrap().name, "debian");
        assert_eq!(lookup_in(p, "root").unwrap().home, "/root");
        assert!(lookup_in(p, "bob").is_none());
    }
}
