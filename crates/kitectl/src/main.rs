//! `kitectl`: register, find, watch and call kites from the command line.

fn main() {
    eprintln!("kitectl: not implemented yet");
    std::process::exit(2);
}
