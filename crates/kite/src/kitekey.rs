//! (configuration and credentials: to be written)
