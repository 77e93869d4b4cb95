//! The cloud-init seed of named VMs: `create` makes `seed.img` (FAT, label CIDATA) with the
//! user, keys and hostname asked for and attaches it read-only after the boot disk; `get` shows
//! it; a clone's first run rewrites it as a new instance with its own hostname; bad inputs are
//! refused with one sentence and leave no bundle. The guest side (cloud-init reading the seed)
//! runs with a real Debian system in the full-guest tests.

mod support;

use std::path::Path;

use support::home::Home;
use virtkit_manager::seed::{read_seed_file, SEED_FILE};

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHv1rTestKeyOnlyForTests0123456789abcdef me@host";

fn seed_text(bundle: &Path, file: &str) -> String {
    String::from_utf8(read_seed_file(&bundle.join(SEED_FILE), file).unwrap()).unwrap()
}

#[test]
fn create_makes_a_seed_and_a_clone_becomes_a_new_instance() {
    if !virtkit_testkit::require_kvm() {
        return;
    }
    let home = Home::new("seed", "clone");
    let image = home.session_image();
    let key = home.dir.join("id_test.pub");
    std::fs::write(&key, format!("{KEY}\n")).unwrap();
    let extra = home.dir.join("extra.yaml");
    std::fs::write(&extra, "#cloud-config\npackages: [htop]\n").unwrap();
    let args = [
        "create",
        "web",
        "--from",
        image.to_str().unwrap(),
        "--disk-size",
        "16M",
        "--memory",
        "64M",
        "--cpus",
        "1",
        "--network",
        "none",
        "--ssh-key",
        key.to_str().unwrap(),
        "--user",
        "dev",
        "--user-data",
        extra.to_str().unwrap(),
    ];
    home.ok(&args);
    let web = home.bundle("web");
    let get = home.json(&["get", "web", "--format", "json"]);
    assert_eq!(get["seed"]["user"], "dev", "{get}");
    assert_eq!(get["seed"]["ssh_keys"], 1);
    assert_eq!(get["seed"]["hostname"], "web");
    assert_eq!(get["seed"]["user_data"], true);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(web.join("config.json")).unwrap()).unwrap();
    let disks = config["storage_devices"].as_array().unwrap();
    assert_eq!(disks.len(), 2, "{config}");
    assert_eq!(disks[1]["path"], SEED_FILE);
    assert_eq!(disks[1]["read_only"], true);
    let id = get["machine_id"].as_str().unwrap();
    assert_eq!(
        seed_text(&web, "meta-data"),
        format!("instance-id: iid-{id}\nlocal-hostname: web\n")
    );
    let user_data = seed_text(&web, "user-data");
    assert!(
        user_data.contains(KEY) && user_data.contains("packages: [htop]"),
        "{user_data}"
    );

    // The VM runs with its seed attached (SeaBIOS boots the first disk).
    home.ok(&["run", "web", "--detach"]);
    home.wait_log("web", "session: ready", 1);
    home.ok(&["stop", "web", "--timeout", "5"]);

    // A clone is a new instance with its own hostname once it runs.
    home.ok(&["clone", "web", "web-2"]);
    let clone = home.bundle("web-2");
    let clone_id = home.json(&["get", "web-2", "--format", "json"])["machine_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(clone_id, id);
    home.ok(&["run", "web-2", "--detach"]);
    home.wait_log("web-2", "session: ready", 1);
    home.ok(&["stop", "web-2", "--timeout", "5"]);
    assert_eq!(
        seed_text(&clone, "meta-data"),
        format!("instance-id: iid-{clone_id}\nlocal-hostname: web-2\n")
    );
    // The original's seed is its own still.
    assert!(seed_text(&web, "meta-data").contains(id));
}

#[test]
fn seed_options_are_checked_before_anything_is_made() {
    let home = Home::new("seed", "bad");
    let image = home.session_image();
    let not_key = home.dir.join("not.pub");
    std::fs::write(&not_key, "hello\n").unwrap();
    for (extra, says) in [
        (
            vec!["--ssh-key", not_key.to_str().unwrap()],
            "is not an SSH public key",
        ),
        (vec!["--user", "Root!"], "cannot be the guest's user"),
        (vec!["--hostname=x_y"], "is not a hostname"),
        (
            vec!["--user-data", not_key.to_str().unwrap()],
            "neither a cloud-config",
        ),
    ] {
        let mut args = vec![
            "create",
            "bad",
            "--from",
            image.to_str().unwrap(),
            "--disk-size",
            "16M",
        ];
        args.extend(extra);
        home.fails(&args, says);
        assert!(!home.bundle("bad").exists(), "a refused create left a bundle");
    }
    // --no-seed: none, even for a firmware boot from an image.
    home.ok(&[
        "create",
        "plain",
        "--from",
        image.to_str().unwrap(),
        "--disk-size",
        "16M",
        "--no-seed",
    ]);
    assert!(!home.bundle("plain").join(SEED_FILE).exists());
    assert_eq!(
        home.json(&["get", "plain", "--format", "json"])["seed"],
        serde_json::Value::Null
    );
}

#[test]
fn ssh_print_config_names_the_seed_user_the_key_and_the_vsock_proxy() {
    let home = Home::new("seed", "ssh");
    let image = home.session_image();
    let key = home.dir.join("id_vk.pub");
    std::fs::write(&key, format!("{KEY}\n")).unwrap();
    std::fs::write(home.dir.join("id_vk"), "private\n").unwrap();
    home.ok(&[
        "create",
        "s",
        "--from",
        image.to_str().unwrap(),
        "--disk-size",
        "16M",
        "--network",
        "none",
        "--ssh-key",
        key.to_str().unwrap(),
        "--user",
        "dev",
    ]);
    let config = home.ok(&["ssh", "s", "--print-config"]);
    assert!(config.starts_with("Host virtkit-s\n"), "{config}");
    assert!(config.contains("  User dev\n"), "{config}");
    assert!(config.contains(" vsock-proxy s 22\n"), "{config}");
    assert!(
        config.contains("  StrictHostKeyChecking accept-new\n"),
        "{config}"
    );
    assert!(
        config.contains(&format!("  IdentityFile {}\n", home.dir.join("id_vk").display())),
        "{config}"
    );
    let known_hosts = home.bundle("s").join("known_hosts");
    assert!(config.contains(&format!("  UserKnownHostsFile {}\n", known_hosts.display())));
    assert!(known_hosts.is_file());
    // `-l` overrides the user; a VM without a seed needs one.
    assert!(home
        .ok(&["ssh", "s", "-l", "other", "--print-config"])
        .contains("  User other\n"));
    home.ok(&[
        "create",
        "n",
        "--from",
        image.to_str().unwrap(),
        "--disk-size",
        "16M",
        "--no-seed",
    ]);
    home.fails(&["ssh", "n", "--print-config"], "has no cloud-init seed");
}
