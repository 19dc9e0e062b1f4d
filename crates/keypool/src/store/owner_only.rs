//! The database holds the upstream keys: its file, and the `-wal` and `-shm`
//! files SQLite keeps beside it, are readable by their owner only (0600).
//!
//! SQLite creates `-wal` and `-shm` with the mode of the database file
//! (`robust_open` copies it), so creating the database file itself with 0600
//! before SQLite opens it is enough for all three; an existing file that
//! others can read is tightened, with a warning. The process umask is not
//! touched (it is process-wide). Not on Windows, which has no such modes.

use std::path::Path;

/// Makes sure the database at `path` (its file name as SQLite will open
/// it, from `url`) and its companions, if present, are 0600. Nothing for an
/// in-memory database. Failures are warned about, not fatal: SQLite then
/// opens the file as it can, and reports what it cannot do itself.
pub(super) fn prepare(url: &str, path: &Path) {
    #[cfg(unix)]
    {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        if in_memory || path.as_os_str().is_empty() {
            return;
        }
        create_owner_only(path);
        for companion in ["-wal", "-shm", "-journal"] {
            let mut name = path.as_os_str().to_owned();
            name.push(companion);
            tighten(Path::new(&name));
        }
        tighten(path);
    }
}

#[cfg(unix)]
const OWNER_ONLY: u32 = 0o600;

/// Creates the file with mode 0600 if it does not exist yet.
#[cfg(unix)]
fn create_owner_only(path: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(OWNER_ONLY).open(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        // A missing directory and the like: SQLite says so in its own error.
        Err(e) => tracing::debug!(path = %path.display(), error = %e, "could not create the database file"),
    }
}

/// Takes group and other permissions away from an existing file.
#[cfg(unix)]
fn tighten(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else { return };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return;
    }
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700)) {
        Ok(()) => tracing::warn!(
            path = %path.display(),
            was = format!("{mode:o}"),
            "the database holds upstream keys but others could read it; made it readable by its owner only"
        ),
        Err(e) => tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:o}"),
            error = %e,
            "the database holds upstream keys and others can read it; could not change that (chmod 600 it)"
        ),
    }
}
