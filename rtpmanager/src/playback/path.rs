//! Resolution of the file names a Play request carries.
//!
//! A name is relative to the manager's audio directory and must stay inside
//! it: absolute paths and `..` components are refused before the file system
//! is asked anything, and the name is then canonicalised (following
//! symlinks) and must still lie under the canonical audio directory, so a
//! symlink pointing out of the directory is refused too.

use std::io;
use std::path::{Component, Path, PathBuf};

/// Why a requested file name is refused.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The name is empty.
    #[error("the file name is empty")]
    Empty,
    /// The name is an absolute path.
    #[error("absolute paths are refused; name a file relative to the audio directory")]
    Absolute,
    /// The name has a `..` component.
    #[error("'..' is refused; name a file inside the audio directory")]
    ParentDir,
    /// Nothing exists under that name.
    #[error("no such file in the audio directory")]
    NotFound,
    /// The name resolves (through a symlink) to a place outside the directory.
    #[error("the path resolves outside the audio directory")]
    Outside,
    /// The name resolves to a directory or a special file.
    #[error("not a regular file")]
    NotAFile,
    /// The audio directory itself cannot be resolved.
    #[error("the audio directory is not usable: {0}")]
    Directory(#[source] io::Error),
    /// Resolving the name failed otherwise (permissions, loops).
    #[error("cannot resolve the path: {0}")]
    Resolve(#[source] io::Error),
}

/// The canonical path of `name` inside `audio_dir`; see the module documentation.
pub fn resolve(audio_dir: &Path, name: &str) -> Result<PathBuf, PathError> {
    if name.is_empty() {
        return Err(PathError::Empty);
    }
    let requested = Path::new(name);
    for component in requested.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(PathError::ParentDir),
            Component::RootDir | Component::Prefix(_) => return Err(PathError::Absolute),
        }
    }
    let dir = audio_dir.canonicalize().map_err(PathError::Directory)?;
    let resolved = dir.join(requested).canonicalize().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            PathError::NotFound
        } else {
            PathError::Resolve(e)
        }
    })?;
    if !resolved.starts_with(&dir) {
        return Err(PathError::Outside);
    }
    if !resolved.is_file() {
        return Err(PathError::NotAFile);
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audio_dir() -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().expect("temporary directory");
        let audio = root.path().join("audio");
        std::fs::create_dir_all(audio.join("prompts")).expect("audio directory");
        std::fs::write(audio.join("welcome.wav"), b"x").expect("file");
        std::fs::write(audio.join("prompts/menu.wav"), b"x").expect("file");
        std::fs::write(root.path().join("secret.wav"), b"x").expect("file outside");
        (root, audio)
    }

    #[test]
    fn names_inside_the_directory_resolve_to_canonical_paths() {
        let (_root, audio) = audio_dir();
        let canonical = audio.canonicalize().expect("canonical audio dir");
        assert_eq!(
            resolve(&audio, "welcome.wav").expect("plain name"),
            canonical.join("welcome.wav")
        );
        assert_eq!(
            resolve(&audio, "./prompts/menu.wav").expect("sub-directory"),
            canonical.join("prompts/menu.wav")
        );
    }

    #[test]
    fn traversal_absolute_paths_and_symlinks_out_are_refused() {
        let (root, audio) = audio_dir();
        std::os::unix::fs::symlink(root.path().join("secret.wav"), audio.join("escape.wav"))
            .expect("symlink out");
        std::os::unix::fs::symlink(audio.join("welcome.wav"), audio.join("alias.wav"))
            .expect("symlink in");
        let refused = |name: &str| match resolve(&audio, name) {
            Err(e) => e.to_string(),
            Ok(p) => panic!("{name} resolved to {}", p.display()),
        };
        assert_eq!(
            refused("../secret.wav"),
            "'..' is refused; name a file inside the audio directory"
        );
        assert_eq!(
            refused("prompts/../../secret.wav"),
            "'..' is refused; name a file inside the audio directory"
        );
        assert_eq!(
            refused("/etc/passwd"),
            "absolute paths are refused; name a file relative to the audio directory"
        );
        assert_eq!(
            refused("escape.wav"),
            "the path resolves outside the audio directory"
        );
        assert_eq!(
            refused("missing.wav"),
            "no such file in the audio directory"
        );
        assert_eq!(refused("prompts"), "not a regular file");
        assert_eq!(refused(""), "the file name is empty");
        assert!(
            resolve(&audio, "alias.wav").is_ok(),
            "a symlink that stays inside is fine"
        );
    }
}
