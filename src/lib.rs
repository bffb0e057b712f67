//! Galaxy Forge's cross-process test package: the tools end-to-end tests
//! drive (`galaxy-load`) live in `src/bin`, the tests in `tests/`.
