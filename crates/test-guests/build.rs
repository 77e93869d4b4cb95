//! Assembles and links the test guests in `asm/` with the machine's GNU binutils.
//!
//! PVH guests: `as --32`, `ld -m elf_i386 -T asm/pvh.ld`, then `objcopy -O elf64-x86-64` gives
//! `$OUT_DIR/<name>.elf` (32-bit code in a 64-bit ELF, like a vmlinux).
//! ELF32 PVH guests: `as --32`, `ld -m elf_i386 -T asm/pvh.ld` gives `$OUT_DIR/<name>.elf`
//! (ELFCLASS32, `EM_386`), kept as the linker wrote it.
//! The firmware image: `as --32`, `ld -T asm/firmware.ld`, `objcopy -O binary` gives
//! `$OUT_DIR/reset_vector.bin` (exactly 64 KiB).
//! MBR programs: `as --32`, `ld -T asm/mbr.ld`, `objcopy -O binary` gives `$OUT_DIR/<name>.mbr`
//! (exactly 512 bytes, ending in 0x55 0xaa). Multi-sector MBR programs are built the same way
//! and are a whole number of sectors, more than one, whose first ends in 0x55 0xaa.
//!
//! The tools are `as`, `ld` and `objcopy` from `PATH`; `VIRTKIT_AS`, `VIRTKIT_LD` and
//! `VIRTKIT_OBJCOPY` override them (e.g. `x86_64-linux-gnu-as` on a non-x86 build host).

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{self, Command};

/// PVH guests: each `asm/<name>.s` becomes `$OUT_DIR/<name>.elf`.
const PVH_GUESTS: &[&str] = &[
    "hello",
    "smoke",
    "echo",
    "io_probe",
    "cmos_probe",
    "smp",
    "counter",
    "flood",
    "stream",
    "power_button",
    "reset",
    "triple_fault",
];

/// PVH guests kept as ELF32: each `asm/<name>.s` becomes `$OUT_DIR/<name>.elf` (ELFCLASS32).
const PVH_ELF32_GUESTS: &[&str] = &["hello_elf32"];

/// Raw firmware images: each `asm/<name>.s` becomes `$OUT_DIR/<name>.bin`.
const FIRMWARE_GUESTS: &[&str] = &["reset_vector", "flash_probe"];

const FIRMWARE_SIZE: u64 = 64 * 1024;

/// MBR programs (boot sectors): each `asm/<name>.s` becomes `$OUT_DIR/<name>.mbr`.
const MBR_GUESTS: &[&str] = &[
    "mbr_read",
    "mbr_write",
    "mbr_drives",
    "mbr_bench",
    "mbr_id",
    "mbr_keys",
    "mbr_mouse",
    "mbr_ticker",
    "mbr_rtc",
];

/// MBR programs longer than one sector (the boot sector loads the rest itself).
const MULTI_SECTOR_MBR_GUESTS: &[&str] = &["mbr_session", "mbr_pam"];

const MBR_SIZE: usize = 512;

struct Tools {
    assembler: PathBuf,
    linker: PathBuf,
    objcopy: PathBuf,
}

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let asm_dir = manifest_dir.join("asm");

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", asm_dir.display());
    let mut sources: Vec<PathBuf> = fs::read_dir(&asm_dir)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", asm_dir.display())))
        .map(|entry| entry.expect("read_dir entry").path())
        .collect();
    sources.sort();
    for source in &sources {
        println!("cargo:rerun-if-changed={}", source.display());
    }

    let tools = Tools {
        assembler: tool("VIRTKIT_AS", "as"),
        linker: tool("VIRTKIT_LD", "ld"),
        objcopy: tool("VIRTKIT_OBJCOPY", "objcopy"),
    };

    for name in PVH_GUESTS {
        let elf32 = out_dir.join(format!("{name}.elf32"));
        let elf = out_dir.join(format!("{name}.elf"));
        link_pvh(&tools, &asm_dir, &out_dir, name, &elf32);
        // Kernels are 64-bit ELF files (vmlinux), and so is what VMM loaders such as
        // linux-loader read: repackage the 32-bit code as ELF64, which changes no byte of it.
        run(Command::new(&tools.objcopy)
            .args(["-O", "elf64-x86-64"])
            .arg(&elf32)
            .arg(&elf));
    }

    for name in PVH_ELF32_GUESTS {
        link_pvh(
            &tools,
            &asm_dir,
            &out_dir,
            name,
            &out_dir.join(format!("{name}.elf")),
        );
    }

    for name in FIRMWARE_GUESTS {
        let object = assemble(&tools, &asm_dir, &out_dir, name);
        let elf = out_dir.join(format!("{name}.fw.elf"));
        let bin = out_dir.join(format!("{name}.bin"));
        run(Command::new(&tools.linker)
            .args(["-m", "elf_i386", "-nostdlib", "-static", "--build-id=none", "-T"])
            .arg(asm_dir.join("firmware.ld"))
            .arg("-o")
            .arg(&elf)
            .arg(&object));
        run(Command::new(&tools.objcopy)
            .args(["-O", "binary"])
            .arg(&elf)
            .arg(&bin));
        let size = fs::metadata(&bin)
            .unwrap_or_else(|e| fail(&format!("cannot stat {}: {e}", bin.display())))
            .len();
        if size != FIRMWARE_SIZE {
            fail(&format!(
                "{} is {size} bytes; a firmware image must be exactly {FIRMWARE_SIZE}",
                bin.display()
            ));
        }
    }

    let mbr_guests = MBR_GUESTS.iter().map(|name| (name, false));
    let multi_sector_guests = MULTI_SECTOR_MBR_GUESTS.iter().map(|name| (name, true));
    for (name, multi_sector) in mbr_guests.chain(multi_sector_guests) {
        let object = assemble(&tools, &asm_dir, &out_dir, name);
        let elf = out_dir.join(format!("{name}.mbr.elf"));
        let mbr = out_dir.join(format!("{name}.mbr"));
        run(Command::new(&tools.linker)
            .args(["-m", "elf_i386", "-nostdlib", "-static", "--build-id=none", "-T"])
            .arg(asm_dir.join("mbr.ld"))
            .arg("-o")
            .arg(&elf)
            .arg(&object));
        run(Command::new(&tools.objcopy)
            .args(["-O", "binary"])
            .arg(&elf)
            .arg(&mbr));
        let bytes = fs::read(&mbr).unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", mbr.display())));
        let signed = bytes.len() >= MBR_SIZE && bytes[MBR_SIZE - 2..MBR_SIZE] == [0x55, 0xaa];
        let (well_formed, rule) = if multi_sector {
            (
                signed && bytes.len() > MBR_SIZE && bytes.len() % MBR_SIZE == 0,
                "a multi-sector MBR program must be a whole number of 512-byte sectors, more than \
                 one, the first ending in 0x55 0xaa",
            )
        } else {
            (
                signed && bytes.len() == MBR_SIZE,
                "a boot sector must be exactly 512 bytes and end in 0x55 0xaa",
            )
        };
        if !well_formed {
            fail(&format!("{} is {} bytes; {rule}", mbr.display(), bytes.len()));
        }
    }
}

/// Assembles `asm/<name>.s` and links it with `asm/pvh.ld` into the ELF32 file `output`.
fn link_pvh(tools: &Tools, asm_dir: &Path, out_dir: &Path, name: &str, output: &Path) {
    let object = assemble(tools, asm_dir, out_dir, name);
    run(Command::new(&tools.linker)
        .args(["-m", "elf_i386", "-nostdlib", "-static", "--build-id=none"])
        .args(["-z", "max-page-size=0x1000", "-T"])
        .arg(asm_dir.join("pvh.ld"))
        .arg("-o")
        .arg(output)
        .arg(&object));
}

/// `as --32 -I asm -o $OUT_DIR/<name>.o asm/<name>.s`
fn assemble(tools: &Tools, asm_dir: &Path, out_dir: &Path, name: &str) -> PathBuf {
    let object = out_dir.join(format!("{name}.o"));
    run(Command::new(&tools.assembler)
        .arg("--32")
        .arg("-I")
        .arg(asm_dir)
        .arg("-o")
        .arg(&object)
        .arg(asm_dir.join(format!("{name}.s"))));
    object
}

/// The tool named by the environment variable `var`, else `default`; checked by running it
/// with `--version`, so that a missing tool fails the build with a clear message.
fn tool(var: &str, default: &str) -> PathBuf {
    println!("cargo:rerun-if-env-changed={var}");
    let path = env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    match Command::new(&path).arg("--version").output() {
        Ok(output) if output.status.success() => path,
        Ok(output) => fail(&format!(
            "`{} --version` failed ({}): {}",
            path.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => fail(&format!(
            "`{}` not found. The test guests are assembled with GNU binutils (`as`, `ld`, \
             `objcopy`); install them (Debian/Ubuntu: `apt-get install binutils`) or point \
             {var} at the tool",
            path.display()
        )),
        Err(e) => fail(&format!("cannot run `{}`: {e}", path.display())),
    }
}

fn run(command: &mut Command) {
    let program = command.get_program().to_owned();
    let rendered = render(command);
    let output = command
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run `{rendered}`: {e}")));
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        fail(&format!(
            "`{rendered}` failed ({}):\n{}",
            output.status,
            stderr.trim_end()
        ));
    }
    // Surface assembler/linker warnings instead of dropping them.
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        println!(
            "cargo:warning={}: {line}",
            Path::new(&program)
                .file_name()
                .unwrap_or(OsStr::new("?"))
                .to_string_lossy()
        );
    }
}

fn render(command: &Command) -> String {
    let mut parts = vec![command.get_program().to_string_lossy().into_owned()];
    parts.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

fn fail(message: &str) -> ! {
    eprintln!("error: virtkit-test-guests: {message}");
    process::exit(1);
}
