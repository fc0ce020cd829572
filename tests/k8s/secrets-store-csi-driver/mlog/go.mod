module monis.app/mlog

go 1.21

require k8s.io/klog/v2 v2.120.1
