fn main() {
    println!("pgbay: not wired yet");
}
