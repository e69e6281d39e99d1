//! `neo-export`: a NEO cluster or a storage database back to a `Data.fs`.
//! (Being written: see issue 6.)
