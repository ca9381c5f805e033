//! Opening the feed kept in a directory (the layout `hypercore@9` writes with
//! random-access-file), with errors that say which directory and what is wrong with it.

use std::path::{Path, PathBuf};

use super::feed::{Feed, FeedError};
use super::store::{FsStore, StoreError};

/// How a feed directory is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reading only: another process (`dazaar feed append`) may be writing the feed.
    ReadOnly,
    /// Reading and appending (the directory must already hold a feed).
    ReadWrite,
}

/// Why the feed in a directory could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeedDirError {
    /// The directory does not exist.
    #[error("{}: no such feed directory", .0.display())]
    NoDir(PathBuf),
    /// The directory holds no feed (no `key` file).
    #[error("{}: not a feed (no key file)", .0.display())]
    NotAFeed(PathBuf),
    /// The feed's files could not be opened.
    #[error("opening feed {}: {source}", dir.display())]
    Store {
        /// The feed's directory.
        dir: PathBuf,
        /// What failed.
        source: StoreError,
    },
    /// The feed could not be read.
    #[error("opening feed {}: {source}", dir.display())]
    Feed {
        /// The feed's directory.
        dir: PathBuf,
        /// What failed.
        source: FeedError,
    },
}

/// Opens the feed in `dir`, which must exist and hold one.
pub fn open_feed_dir(dir: &Path, access: Access) -> Result<Feed<FsStore>, FeedDirError> {
    if !dir.is_dir() {
        return Err(FeedDirError::NoDir(dir.to_owned()));
    }
    if !dir.join("key").is_file() {
        return Err(FeedDirError::NotAFeed(dir.to_owned()));
    }
    let store = match access {
        Access::ReadOnly => FsStore::open_read_only(dir),
        Access::ReadWrite => FsStore::open(dir, false),
    }
    .map_err(|source| FeedDirError::Store {
        dir: dir.to_owned(),
        source,
    })?;
    Feed::open(store, None).map_err(|source| FeedDirError::Feed {
        dir: dir.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_which_directory_is_wrong() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("missing");
        assert!(matches!(
            open_feed_dir(&missing, Access::ReadOnly),
            Err(FeedDirError::NoDir(d)) if d == missing
        ));
        assert!(matches!(
            open_feed_dir(tmp.path(), Access::ReadWrite),
            Err(FeedDirError::NotAFeed(_))
        ));
        let store = FsStore::open(tmp.path(), true).unwrap();
        let mut feed = Feed::create(store, crate::crypto::Ed25519KeyPair::generate()).unwrap();
        feed.append_batch(&[b"one".to_vec()]).unwrap();
        let key = feed.key();
        drop(feed);
        let again = open_feed_dir(tmp.path(), Access::ReadOnly).unwrap();
        assert_eq!((again.key(), again.length()), (key, 1));
    }
}
