//! Benchmarks of the Kite RPC path, the transport ceiling and Kontrol.

fn main() {
    eprintln!("kite-bench: not implemented yet");
    std::process::exit(2);
}
