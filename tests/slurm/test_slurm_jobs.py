"""The parser of `scontrol show job -d` records (no cluster needed)."""

from slurm_jobs import check, gpus_allocated, gpus_requested, parse_jobs, rule_of

ONELINER = (
    "JobId=1 JobName=84577cb5 UserId=root(0) JobState=COMPLETED Partition=cpu "
    "NtasksPerN:B:S:C=0:0:*:* CPUs/Task=4 JOB_GRES=(null)   Nodes=vm CPU_IDs=0-3 Mem=24000 GRES= "
    "Comment=rule_probe  StdOut=/tmp/tw/.snakemake/slurm_logs/rule_probe/1.log Power= \n"
    "JobId=2 JobName=84577cb5 UserId=root(0) JobState=COMPLETED Partition=gpu "
    "JOB_GRES=gpu:1   Nodes=vm CPU_IDs=0-7 Mem=32000 GRES= "
    "Comment=rule_extract_wildcards_tiny_qwen_caption-tao_0  Power= TresPerJob=gres:gpu:1 \n"
)

MULTILINE = """JobId=7 JobName=wrap
   JobState=RUNNING Reason=None Dependency=(null)
   Partition=gpu AllocNode:Sid=localhost:6147
   JOB_GRES=gpu:a100:2
     Nodes=vm CPU_IDs=0 Mem=1024 GRES=gpu:a100:2(IDX:0-1)
   TresPerNode=gres:gpu:a100:2

"""


def test_oneliner_records():
    probe, extract = parse_jobs(ONELINER)
    assert rule_of(probe) == "probe" and rule_of(extract) == "extract"
    assert probe["CPUs/Task"] == "4" and probe["NtasksPerN:B:S:C"] == "0:0:*:*"
    assert (gpus_requested(probe), gpus_allocated(probe)) == (0, 0)
    assert (gpus_requested(extract), gpus_allocated(extract)) == (1, 1)
    assert check([probe, extract], {"extract"}, gpu_partition="gpu") == []


def test_multiline_record_with_gpu_type():
    (job,) = parse_jobs(MULTILINE)
    assert job["Partition"] == "gpu" and job["GRES"] == "gpu:a100:2(IDX:0-1)"
    assert (gpus_requested(job), gpus_allocated(job)) == (2, 2)
    assert rule_of(job) is None


def test_check_names_each_problem():
    probe, extract = parse_jobs(ONELINER)
    problems = check([probe, extract], {"probe"}, gpu_partition="gpu")
    assert any("rule_probe): asked for no GPU" in p for p in problems)
    assert any("rule_probe): Partition=cpu" in p for p in problems)
    assert any("rule_extract" in p and "not a GPU rule" in p for p in problems)
    assert check([], {"extract"}) != []
