//go:build !race

package integration

// memRaceDetector: this test binary runs without the race detector.
const memRaceDetector = false
