use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHv1rTestKeyOnlyForTests0123456789abcdef me@host";

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("virtkit-seed-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn settings(dir: &Path, extra: Option<&str>) -> SeedSettings {
    let key = dir.join("id_ed25519.pub");
    std::fs::write(&key, format!("{KEY}\n")).unwrap();
    std::fs::write(dir.join("id_ed25519"), "private").unwrap();
    let extra_path = extra.map(|text| {
        let p = dir.join("extra.yaml");
        std::fs::write(&p, text).unwrap();
        p
    });
    SeedSettings::new(Some("dev"), &[key], None, extra_path.as_deref()).unwrap()
}

#[test]
fn the_seed_reads_back_with_its_label_meta_data_user_data_and_agent() {
    let dir = Dir::new("readback");
    let mut s = settings(&dir.0, None);
    assert_eq!(
        s.identity_file.as_deref(),
        Some(dir.0.join("id_ed25519").as_path())
    );
    let agent = dir.0.join("agent-bin");
    std::fs::write(&agent, vec![0x7f; 300_000]).unwrap();
    s.write(&dir.0, "web_1", "1234-abcd", Some(&agent)).unwrap();
    let seed = dir.0.join(SEED_FILE);
    let meta = String::from_utf8(read_seed_file(&seed, "meta-data").unwrap()).unwrap();
    assert_eq!(meta, "instance-id: iid-1234-abcd\nlocal-hostname: web-1\n");
    let user = String::from_utf8(read_seed_file(&seed, "user-data").unwrap()).unwrap();
    assert!(user.starts_with("#cloud-config\n"), "{user}");
    assert!(user.contains(KEY) && user.contains("\"name\": \"dev\""), "{user}");
    assert!(user.contains("virtkit-agent.service"), "{user}");
    assert_eq!(read_seed_file(&seed, AGENT_PATH_IN_SEED).unwrap().len(), 300_000);
    // What blkid sees: a vfat volume labelled CIDATA, which NoCloud looks for.
    if let Ok(out) = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(&seed)
        .output()
    {
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("TYPE=vfat"), "{text}");
            assert!(text.contains("LABEL=CIDATA"), "{text}");
        } else {
            panic!(
                "blkid -p {}: {}",
                seed.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    } else {
        virtkit_testkit::skip("blkid is not installed (Debian package util-linux)");
    }
    // seed.json records what the volume was written for.
    let loaded = SeedSettings::load(&dir.0).unwrap().unwrap();
    assert_eq!(loaded, s);
}

#[test]
fn a_new_machine_id_or_name_rewrites_the_seed_and_the_same_does_not() {
    let dir = Dir::new("refresh");
    let mut s = settings(&dir.0, None);
    s.write(&dir.0, "a", "id-1", None).unwrap();
    assert!(!s.refresh(&dir.0, "a", "id-1", None).unwrap());
    assert!(s.refresh(&dir.0, "b", "id-2", None).unwrap());
    let meta = String::from_utf8(read_seed_file(&dir.0.join(SEED_FILE), "meta-data").unwrap()).unwrap();
    assert_eq!(meta, "instance-id: iid-id-2\nlocal-hostname: b\n");
    assert!(!dir.0.join("seed.img.tmp").exists());
}

#[test]
fn the_users_own_user_data_goes_after_virtkits_as_multipart_mime() {
    let dir = Dir::new("multipart");
    let s = settings(
        &dir.0,
        Some("#cloud-config\npackages: [htop]\nruncmd: [[touch, /x]]\n"),
    );
    let text = user_data(&s, "h", true);
    assert!(text.starts_with("Content-Type: multipart/mixed;"), "{text}");
    let ours = text.find("#cloud-config\n{").unwrap();
    let theirs = text.find("packages: [htop]").unwrap();
    assert!(ours < theirs);
    assert!(text.contains("Merge-Type: list(append)"));
    assert!(text.trim_end().ends_with("--"));
    let script = settings(&dir.0, Some("#!/bin/sh\necho hi\n"));
    assert!(user_data(&script, "h", false).contains("Content-Type: text/x-shellscript"));
}

#[test]
fn bad_inputs_are_one_sentence_each() {
    let dir = Dir::new("bad");
    let not_key = dir.0.join("notakey.pub");
    std::fs::write(&not_key, "hello\n").unwrap();
    let e = SeedSettings::new(Some("dev"), &[not_key], None, None).unwrap_err();
    assert!(e.to_string().contains("is not an SSH public key"), "{e}");
    let e = SeedSettings::new(Some("Root!"), &[], None, None).unwrap_err();
    assert!(e.to_string().contains("cannot be the guest's user"), "{e}");
    let e = SeedSettings::new(Some("root"), &[], None, None).unwrap_err();
    assert!(e.to_string().contains("(not root)"), "{e}");
    let e = SeedSettings::new(Some("dev"), &[], Some("-bad-"), None).unwrap_err();
    assert!(e.to_string().contains("is not a hostname"), "{e}");
    let plain = dir.0.join("plain.txt");
    std::fs::write(&plain, "hello\n").unwrap();
    let e = SeedSettings::new(Some("dev"), &[], None, Some(&plain)).unwrap_err();
    assert!(e.to_string().contains("neither a cloud-config"), "{e}");
    let e = SeedSettings::new(Some("dev"), &[dir.0.join("missing.pub")], None, None).unwrap_err();
    assert!(e.to_string().contains("missing.pub"), "{e}");
    assert_eq!(hostname_for("my_vm.1"), "my-vm-1");
    assert_eq!(hostname_for("___"), "virtkit");
}

/// Debian 12's own cloud-init checks virtkit's cloud-config (and a merged one) against its
/// schema: its package unpacked into the cache (never installed), run by the system's python3
/// with the libraries cloud-init depends on (scripts/install-deps.sh installs them).
#[test]
fn debian_12s_cloud_init_finds_the_user_data_valid() {
    let Some(cloud_init) = unpacked_cloud_init() else {
        return;
    };
    let dir = Dir::new("schema");
    let s = settings(&dir.0, None);
    for (name, text) in [
        ("plain.yaml", user_data(&s, "web-1", false)),
        ("agent.yaml", user_data(&s, "web-1", true)),
    ] {
        let path = dir.0.join(name);
        std::fs::write(&path, &text).unwrap();
        let out = Command::new("/usr/bin/python3")
            .arg(cloud_init.join("usr/bin/cloud-init"))
            .args(["schema", "--config-file"])
            .arg(&path)
            .env("PYTHONPATH", cloud_init.join("usr/lib/python3/dist-packages"))
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.contains("Valid cloud-config"),
            "{name}: {said}\n{text}"
        );
    }
}

/// Debian's cloud-init package unpacked under the project's cache, fetched with `apt-get
/// download` the first time; `None` (and SKIPPED) where that cannot be done.
fn unpacked_cloud_init() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/cloud-init");
    let done = root.join("usr/bin/cloud-init");
    if done.is_file() {
        return Some(root);
    }
    let python_ok = Command::new("/usr/bin/python3")
        .args(["-c", "import yaml, jsonschema, configobj, jinja2, jsonpatch"])
        .status()
        .is_ok_and(|s| s.success());
    if !python_ok {
        virtkit_testkit::skip(
            "python3 lacks cloud-init's libraries (apt install python3-yaml python3-jsonschema python3-configobj python3-jinja2 python3-jsonpatch)",
        );
        return None;
    }
    let work = root.with_extension("download");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let got = Command::new("apt-get")
        .args(["download", "cloud-init"])
        .current_dir(&work)
        .output();
    let deb = std::fs::read_dir(&work)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"));
    let Some(deb) = deb else {
        virtkit_testkit::skip(&format!(
            "cannot download Debian's cloud-init package: {:?}",
            got.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        ));
        return None;
    };
    let staging = root.with_extension("staging");
    let _ = std::fs::remove_dir_all(&staging);
    let unpacked = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&staging)
        .status();
    assert!(
        unpacked.is_ok_and(|s| s.success()),
        "dpkg-deb -x {}",
        deb.display()
    );
    let _ = std::fs::remove_dir_all(&work);
    // Another test process may have finished first: either copy is whole.
    if std::fs::rename(&staging, &root).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    done.is_file().then_some(root)
}
