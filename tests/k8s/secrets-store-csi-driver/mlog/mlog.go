// Package mlog is kvbridge's own stand-in for monis.app/mlog, which the Go module proxy does not
// serve (403 for every version). It implements only what secrets-store-csi-driver v1.6.x calls,
// on top of klog: the driver itself is built unchanged. JSON output is not offered.
package mlog

import (
	"context"
	"fmt"

	"k8s.io/klog/v2"
)

// LogFormat selects the driver's log encoding.
type LogFormat string

const (
	FormatText LogFormat = "text"
	FormatJSON LogFormat = "json"
)

// Setup returns the function that flushes pending log lines at exit.
func Setup() func() {
	return klog.Flush
}

// ValidateAndSetKlogLevelAndFormatGlobally accepts the text format at any non-negative level.
func ValidateAndSetKlogLevelAndFormatGlobally(_ context.Context, level klog.Level, format LogFormat) error {
	if level < 0 {
		return fmt.Errorf("invalid log level %d", level)
	}
	if format != FormatText {
		return fmt.Errorf("log format %q is not available in this build (text only)", format)
	}
	return nil
}

// Error logs err with a message and key/value pairs.
func Error(msg string, err error, keysAndValues ...any) {
	klog.ErrorSDepth(1, err, msg, keysAndValues...)
}

// Fatal logs err, flushes and exits with status 1.
func Fatal(err error, keysAndValues ...any) {
	klog.ErrorSDepth(1, err, "fatal error", keysAndValues...)
	klog.FlushAndExit(klog.ExitFlushTimeout, 1)
}
