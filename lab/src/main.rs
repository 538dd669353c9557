#![allow(dead_code)]

mod triage;

fn main() {}
