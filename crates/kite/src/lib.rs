//! The Kite runtime: write, run and call kites.
