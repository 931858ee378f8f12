//! Files the CLI writes that hold personal data (batch results, person
//! codes, confirmation lists): created mode 0600, whatever the umask, and
//! the advisory lock that keeps `query --batch` and `query collect` from
//! writing one results file at once.
//!
//! A running batch appends to its results file while `query collect`
//! rewrites it by renaming a new file over it: without the lock, lines the
//! batch appended to the old (unlinked) file after collect read it would be
//! lost. Both take an exclusive `flock` on the file and hold it while they
//! use it; the one that comes second is refused at once, before it asks
//! the broker anything.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};

use super::fail::CliError;

/// Options that create a file readable and writable by its owner only.
pub fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// Creates `path` (mode 0600) or empties it, for a file written whole.
/// An existing file that others may read is narrowed to 0600 first: the
/// personal data about to be written must not inherit a wider mode that an
/// earlier version, or the umask, gave it.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    let file = private_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    narrow(&file)?;
    Ok(file)
}

/// Narrows an open file that others may read to 0600.
fn narrow(file: &File) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata()?.permissions().mode();
        if mode & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

/// A fresh file beside `path` for writing its replacement: a random name
/// (no two writers share it, nothing left by an earlier crash is reused),
/// opened with `create_new`, mode 0600.
pub fn create_temp_beside(path: &Path) -> std::io::Result<(PathBuf, File)> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "results".into());
    let mut tag = [0u8; 8];
    OsRng.fill_bytes(&mut tag);
    let tmp = dir.join(format!(".{name}.tmp-{}", hex::encode(tag)));
    let file = private_options().write(true).create_new(true).open(&tmp)?;
    Ok((tmp, file))
}

/// The directory `path` is in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A results file, as [`lock_results`] found it.
pub enum Locked {
    /// Open for reading and appending, locked until dropped.
    File(File),
    /// There is no such file (and none was to be created).
    Missing,
    /// Another process holds the lock: [`busy`] says so.
    Busy,
}

/// The error when another process holds a results file's lock (exit 2:
/// refused before anything is asked).
pub fn busy(path: &Path) -> CliError {
    CliError::usage(format!(
        "結果ファイル {0} は別の処理（実行中の一括照会または query collect）が使用中です / results file {0} is in use by another process (a running `kakehashi query --batch` or `kakehashi query collect`)",
        path.display()
    ))
    .hint("それが終わってから実行し直してください / run this again once it has finished; kept reply keys stay kept until then")
}

/// Opens the results file `path` for reading and appending and takes an
/// exclusive advisory lock on it, held until the returned file is dropped.
/// `create`: a missing file is created (mode 0600). Never waits for
/// another process's lock.
pub fn lock_results(path: &Path, create: bool) -> Result<Locked, CliError> {
    // A file replaced between open and lock (collect renames its rewrite
    // over the path) is locked again under its new identity; a few rounds
    // are plenty unless something keeps replacing it.
    for _ in 0..8 {
        let mut options = private_options();
        options.read(true).append(true).create(create);
        let file = match options.open(path) {
            Ok(f) => f,
            Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Locked::Missing)
            }
            Err(e) => return Err(CliError::file("open results file", path, e)),
        };
        if !try_lock(&file).map_err(|e| CliError::file("lock results file", path, e))? {
            return Ok(Locked::Busy);
        }
        if names_same_file(path, &file)? {
            // A results file others may read (made by hand or another tool,
            // or widened by chmod) is narrowed: answers about to be appended
            // stay private.
            narrow(&file).map_err(|e| CliError::file("restrict results file", path, e))?;
            return Ok(Locked::File(file));
        }
    }
    Ok(Locked::Busy)
}

/// [`lock_results`] for a file that must exist: missing or busy is an error.
pub fn lock_existing(path: &Path) -> Result<File, CliError> {
    match lock_results(path, false)? {
        Locked::File(f) => Ok(f),
        Locked::Missing => Err(CliError::file(
            "read results file",
            path,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )),
        Locked::Busy => Err(busy(path)),
    }
}

/// [`lock_results`] creating a missing file; busy is an error.
pub fn lock_or_create(path: &Path) -> Result<File, CliError> {
    match lock_results(path, true)? {
        Locked::File(f) => Ok(f),
        Locked::Missing | Locked::Busy => Err(busy(path)),
    }
}

/// Takes the exclusive lock without waiting; `false` when another holds it.
#[cfg(unix)]
fn try_lock(file: &File) -> std::io::Result<bool> {
    use rustix::fs::{flock, FlockOperation};
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// No advisory lock off Unix: the CLI is built for Linux hosts.
#[cfg(not(unix))]
fn try_lock(_file: &File) -> std::io::Result<bool> {
    Ok(true)
}

/// Whether `path` still names the file `file` has open.
fn names_same_file(path: &Path, file: &File) -> Result<bool, CliError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let open = file
            .metadata()
            .map_err(|e| CliError::file("read results file", path, e))?;
        match std::fs::metadata(path) {
            Ok(now) => Ok(now.dev() == open.dev() && now.ino() == open.ino()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(CliError::file("read results file", path, e)),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (path, file);
        Ok(true)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_locked_results_file_is_refused_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.jsonl");
        assert!(matches!(lock_results(&path, false), Ok(Locked::Missing)));
        assert!(lock_existing(&path).is_err());
        let held = lock_or_create(&path).unwrap();
        assert_eq!(mode(&path), 0o600, "created private");
        // flock locks belong to the open file: a second open is refused
        // even within this process, as another process would be.
        assert!(matches!(lock_results(&path, false), Ok(Locked::Busy)));
        let err = lock_existing(&path).unwrap_err();
        assert_eq!(err.exit, super::super::fail::Exit::Usage);
        assert!(err.message.contains("in use"), "{}", err.message);
        drop(held);
        assert!(lock_existing(&path).is_ok());
    }

    #[test]
    fn private_files_are_0600_and_narrowed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("codes.csv");
        drop(create_private(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(create_private(&path).unwrap());
        assert_eq!(mode(&path), 0o600, "an old wide file is narrowed");
        let (tmp, _file) = create_temp_beside(&path).unwrap();
        assert_eq!(mode(&tmp), 0o600);
        assert_eq!(tmp.parent(), path.parent());
    }
}
