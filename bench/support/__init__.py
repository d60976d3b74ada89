"""What the benchmark scripts in bench/ share: the private stack they run against and its readings."""
