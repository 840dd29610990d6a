fn main() {
    println!("agent-reaper: under construction");
}
