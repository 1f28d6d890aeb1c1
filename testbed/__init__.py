"""The test and benchmark rig: throwaway namespaces, traffic sources, the guest relay and the
demo's topology. Imported by tests/, bench/ and `make demo`; never by control/ or loader/."""
