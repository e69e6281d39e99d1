//! The Importer: a storage backend that serves an existing `Data.fs` while it
//! migrates it into the storage database. (Being written: see issue 5.)
