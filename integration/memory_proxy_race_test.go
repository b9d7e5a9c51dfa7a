//go:build race

package integration

// raceEnabled: this test binary runs with the race detector, whose shadow
// memory counts in a child's RSS.
const raceEnabled = true
