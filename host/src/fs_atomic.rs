//! Replacing a small file atomically and safely: readers see the old bytes or the new,
//! never a mix, and a crash leaves one of the two.
//!
//! The new bytes go to a temporary file in the same directory, which is then renamed over
//! the target. The temporary name is random and the file is created with
//! `O_CREAT | O_EXCL | O_NOFOLLOW`, so another local user who can write to the directory
//! cannot make us write through a symlink or into a file they prepared by guessing the
//! name (a predictable name was the weakness this replaces). The file is created with its
//! final mode (0600 unless asked otherwise: these files hold keys, accepted terms,
//! revocations), fsynced, renamed, and the directory fsynced so the rename is durable.

use std::ffi::OsString;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The mode [`write_file_atomic`] gives a file: owner read and write only.
pub const PRIVATE_MODE: u32 = 0o600;

/// Temporary names tried before giving up (a collision with a random 64-bit name means
/// someone is planting files; a few tries are plenty).
const ATTEMPTS: usize = 8;

/// The most bytes of the target's name kept in the temporary name (a file name is at
/// most 255 bytes, and the random part is added to it).
const NAME_PREFIX_MAX: usize = 128;

/// Writes `bytes` to `path` atomically, with mode 0600 ([`PRIVATE_MODE`]).
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_file_atomic_with_mode(path, bytes, PRIVATE_MODE)
}

/// Writes `bytes` to `path` atomically, with exactly `mode` (the umask does not apply).
pub fn write_file_atomic_with_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_with_temp_names(path, bytes, mode, random_temp_name)
}

/// `.NAME.RANDOM.tmp` for the target `NAME`.
fn random_temp_name(name: &str) -> OsString {
    let mut cut = name.len().min(NAME_PREFIX_MAX);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let random: u64 = rand::random();
    OsString::from(format!(".{}.{random:016x}.tmp", &name[..cut]))
}

/// [`write_file_atomic_with_mode`] with the temporary names `temp_name` gives (tests pick
/// them to plant files where we will look).
fn write_with_temp_names(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    mut temp_name: impl FnMut(&str) -> OsString,
) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?
        .to_string_lossy()
        .into_owned();
    for _ in 0..ATTEMPTS {
        let tmp = dir.join(temp_name(&name));
        // create_new is O_CREAT | O_EXCL: an existing file or symlink (even a dangling
        // one) at that name fails with EEXIST instead of being opened or followed;
        // O_NOFOLLOW refuses a symlink even if the flags were ever relaxed.
        let file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        let result = fill_and_rename(file, &tmp, path, dir, bytes, mode);
        if result.is_err() {
            // unlink never follows a symlink, so this removes only our name.
            let _ = std::fs::remove_file(&tmp);
        }
        return result;
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free temporary file name next to the target",
    ))
}

fn fill_and_rename(
    mut file: File,
    tmp: &Path,
    path: &Path,
    dir: &Path,
    bytes: &[u8],
    mode: u32,
) -> io::Result<()> {
    // The umask may have taken bits away from `mode`; the caller asked for exactly it.
    file.set_permissions(Permissions::from_mode(mode))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    // rename replaces `path` itself, never what a symlink there points to.
    std::fs::rename(tmp, path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mode_of(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn a_symlink_at_the_temporary_name_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").expect("victim");
        let target = dir.path().join("key");
        // The first name tried is taken by a symlink to the victim (as a local attacker
        // who can guess the name would plant it); the second is free.
        let mut names = vec![OsString::from(".key.planted"), OsString::from(".key.free")];
        symlink(&victim, dir.path().join(".key.planted")).expect("plant");
        write_with_temp_names(&target, b"secret", PRIVATE_MODE, |_| names.remove(0))
            .expect("write");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
        assert_eq!(std::fs::read(&target).expect("target"), b"secret");
        assert!(std::fs::symlink_metadata(dir.path().join(".key.planted"))
            .expect("still there")
            .file_type()
            .is_symlink());
        assert!(!dir.path().join(".key.free").exists(), "renamed away");
    }

    #[test]
    fn a_symlink_at_the_old_predictable_name_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").expect("victim");
        let target = dir.path().join("secret_key");
        let old_name = format!(".secret_key.tmp{}", std::process::id());
        symlink(&victim, dir.path().join(&old_name)).expect("plant");
        write_file_atomic(&target, b"new").expect("write");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
        assert_eq!(std::fs::read(&target).expect("target"), b"new");
    }

    #[test]
    fn gives_up_when_every_name_is_taken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("f");
        std::fs::write(dir.path().join(".taken"), b"x").expect("taken");
        let err = write_with_temp_names(&target, b"y", PRIVATE_MODE, |_| ".taken".into())
            .expect_err("no free name");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert!(!target.exists());
        assert_eq!(
            std::fs::read(dir.path().join(".taken")).expect("kept"),
            b"x"
        );
    }

    #[test]
    fn the_result_has_the_mode_asked_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("secret");
        // An existing, world-readable file is replaced by a private one.
        std::fs::write(&target, b"old").expect("old");
        std::fs::set_permissions(&target, Permissions::from_mode(0o644)).expect("chmod");
        write_file_atomic(&target, b"new").expect("write");
        assert_eq!(std::fs::read(&target).expect("read"), b"new");
        assert_eq!(mode_of(&target), 0o600);
        let public = dir.path().join("public");
        write_file_atomic_with_mode(&public, b"p", 0o644).expect("write");
        assert_eq!(mode_of(&public), 0o644);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn random_names_differ_and_stay_short() {
        let long = "n".repeat(250);
        let a = random_temp_name(&long);
        let b = random_temp_name(&long);
        assert_ne!(a, b);
        assert!(a.len() <= 255, "{}", a.len());
        let multibyte = "é".repeat(100);
        assert!(random_temp_name(&multibyte).len() <= 255);
    }
}
