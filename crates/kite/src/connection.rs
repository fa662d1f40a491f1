//! (runtime core: to be written)
