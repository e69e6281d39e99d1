//! Sim tests of the master.
