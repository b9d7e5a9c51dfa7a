//go:build race

package integration

// memRaceDetector: this test binary runs with the race detector, whose shadow
// memory counts in a child's RSS.
const memRaceDetector = true
