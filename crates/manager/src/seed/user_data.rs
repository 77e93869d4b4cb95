//! What cloud-init reads from the seed: `meta-data` and `user-data`: the user and keys, sshd on
//! vsock port 22 for `virtkit ssh` (socket-activated), and the guest agent when the seed has it.
//!
//! virtkit's part of `user-data` is a cloud-config written as JSON (YAML takes JSON as it is, and
//! serde's quoting leaves nothing to get wrong). With the user's own user-data the two go as
//! multipart MIME, the user's part after virtkit's with a merge type that appends lists, so its
//! `runcmd`, `packages` or `users` add to virtkit's rather than replace them.

use std::path::Path;

use serde_json::json;

use super::{SeedError, SeedSettings};

/// The agent binary's name on the seed volume.
pub const AGENT_PATH_IN_SEED: &str = "virtkit-agent";

/// The systemd unit that runs the agent.
pub const AGENT_UNIT: &str = "[Unit]
Description=virtkit guest agent (exec, cp, ip, time and shutdown over vsock)
After=local-fs.target

[Service]
ExecStartPre=-/sbin/modprobe vmw_vsock_virtio_transport
ExecStart=/usr/local/bin/virtkit-agent
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
";

/// Installs the agent from the seed volume and starts it (once per instance: a clone is a new
/// instance and installs it again).
const INSTALL_AGENT: &str = "set -e; d=$(mktemp -d); mount -o ro LABEL=CIDATA \"$d\"; \
install -m 0755 \"$d/virtkit-agent\" /usr/local/bin/virtkit-agent; umount \"$d\"; rmdir \"$d\"; \
systemctl daemon-reload; systemctl enable --now virtkit-agent.service";

/// sshd over vsock port 22, one `sshd -i` per connection (systemd socket activation, as
/// systemd's own ssh generator does from version 256): `virtkit ssh` reaches it through
/// `vsock-proxy` with no network card.
pub const SSH_VSOCK_SOCKET: &str = "[Unit]
Description=OpenSSH over vsock (virtkit ssh)
ConditionPathExists=/usr/sbin/sshd

[Socket]
ListenStream=vsock::22
Accept=yes

[Install]
WantedBy=sockets.target
";

/// One connection's sshd, its standard input the vsock connection.
pub const SSH_VSOCK_SERVICE: &str = "[Unit]
Description=OpenSSH per-connection server over vsock (virtkit ssh)

[Service]
ExecStart=-/usr/sbin/sshd -i
StandardInput=socket
RuntimeDirectory=sshd
RuntimeDirectoryMode=0755
RuntimeDirectoryPreserve=yes
";

/// Loads the vsock transport now (the modules-load.d file takes over from the next boot) and
/// starts sshd's vsock socket.
const START_SSH_VSOCK: &str = "modprobe vmw_vsock_virtio_transport || true; systemctl daemon-reload; \
if [ -x /usr/sbin/sshd ]; then systemctl enable --now virtkit-ssh-vsock.socket; fi";

const BOUNDARY: &str = "==virtkit-seed-boundary-7c1f==";

/// `meta-data`: the instance id (a new machine id is a new instance: cloud-init runs again) and
/// the hostname.
pub fn meta_data(machine_id: &str, hostname: &str) -> String {
    format!("instance-id: iid-{machine_id}\nlocal-hostname: {hostname}\n")
}

/// virtkit's cloud-config: the hostname, the user with the keys and passwordless sudo, and the
/// agent (its unit, and installing it from the seed) when the seed carries it.
fn cloud_config(settings: &SeedSettings, hostname: &str, agent: bool) -> String {
    let mut config = json!({
        "hostname": hostname,
        "preserve_hostname": false,
        "users": [{
            "name": settings.user,
            "gecos": "virtkit",
            "groups": "sudo",
            "shell": "/bin/bash",
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "lock_passwd": true,
            "ssh_authorized_keys": settings.ssh_authorized_keys,
        }],
        "ssh_pwauth": false,
    });
    let mut files = vec![
        json!({"path": "/etc/modules-load.d/virtkit-vsock.conf", "content": "vmw_vsock_virtio_transport\n", "permissions": "0644"}),
        json!({"path": "/etc/systemd/system/virtkit-ssh-vsock.socket", "content": SSH_VSOCK_SOCKET, "permissions": "0644"}),
        json!({"path": "/etc/systemd/system/virtkit-ssh-vsock@.service", "content": SSH_VSOCK_SERVICE, "permissions": "0644"}),
    ];
    let mut runcmd = vec![json!(["sh", "-c", START_SSH_VSOCK])];
    if agent {
        files.push(json!({"path": "/etc/systemd/system/virtkit-agent.service", "content": AGENT_UNIT, "permissions": "0644"}));
        runcmd.push(json!(["sh", "-c", INSTALL_AGENT]));
    }
    config["write_files"] = json!(files);
    config["runcmd"] = json!(runcmd);
    format!(
        "#cloud-config\n{}\n",
        serde_json::to_string_pretty(&config).unwrap_or_default()
    )
}

/// `user-data`: virtkit's cloud-config, and the user's own after it as multipart MIME.
pub fn user_data(settings: &SeedSettings, hostname: &str, agent: bool) -> String {
    let ours = cloud_config(settings, hostname, agent);
    let Some(extra) = &settings.extra_user_data else {
        return ours;
    };
    let extra_type = if extra.starts_with("#!") {
        "text/x-shellscript"
    } else {
        "text/cloud-config"
    };
    format!(
        "Content-Type: multipart/mixed; boundary=\"{BOUNDARY}\"\nMIME-Version: 1.0\n\n\
         --{BOUNDARY}\nContent-Type: text/cloud-config; charset=\"utf-8\"\nMIME-Version: 1.0\n\
         Content-Disposition: attachment; filename=\"virtkit.cfg\"\n\n{ours}\n\
         --{BOUNDARY}\nContent-Type: {extra_type}; charset=\"utf-8\"\nMIME-Version: 1.0\n\
         Content-Disposition: attachment; filename=\"user-data\"\n\
         Merge-Type: list(append)+dict(no_replace,recurse_list)+str()\n\n{extra}\n\
         --{BOUNDARY}--\n"
    )
}

/// The user's user-data: a cloud-config or a script, in one part.
pub(super) fn check_extra(text: &str, path: &Path) -> Result<(), SeedError> {
    let first = text.lines().next().unwrap_or("").trim_end();
    if first != "#cloud-config" && !first.starts_with("#!") {
        return Err(SeedError::Refused(format!(
            "{} is neither a cloud-config (first line `#cloud-config`) nor a script (first line `#!`); virtkit merges one of those",
            path.display()
        )));
    }
    if text.contains(BOUNDARY) {
        return Err(SeedError::Refused(format!(
            "{} contains virtkit's MIME boundary `{BOUNDARY}`; remove it",
            path.display()
        )));
    }
    Ok(())
}
