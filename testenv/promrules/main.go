// Command promrules checks Prometheus rule files the way `promtool check rules` does, with Prometheus's own rule
// file parser and PromQL parser: the chart's PrometheusRule spec is checked with it in tests/packaging.rs. It is a
// test tool, built from Go modules like the control plane, and never part of IronLB.
//
//	promrules FILE...
//
// Prints every error and exits 1 if there was one.
package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: promrules FILE...")
		os.Exit(2)
	}
	failed := false
	for _, file := range os.Args[1:] {
		groups, errs := rulefmt.ParseFile(file, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.Default())
		for _, err := range errs {
			fmt.Fprintln(os.Stderr, err)
			failed = true
		}
		if len(errs) == 0 {
			rules := 0
			for _, g := range groups.Groups {
				rules += len(g.Rules)
			}
			fmt.Printf("%s: %d groups, %d rules\n", file, len(groups.Groups), rules)
		}
	}
	if failed {
		os.Exit(1)
	}
}
