"""The lines nnkd adds to nnU-Net's training log: the schedule at start, ``epoch k of N`` per epoch."""
from nnkd.trainers.base import epoch_progress_line, schedule_line


def test_schedule_line_states_epochs_and_where_they_come_from():
    line = schedule_line(1000, 250, 50, 0, False, "plans/react_kd.json")
    assert line.startswith("training for 1000 epochs of 250 iterations (+ 50 validation iterations each)")
    assert "nnU-Net's default schedule" in line and "schedule.num_epochs" in line
    line = schedule_line(20, 50, 5, 7, True, "my_plan.json")
    assert "training for 20 epochs of 50 iterations" in line and "continuing at epoch 8" in line
    assert line.endswith("schedule from my_plan.json")


def test_epoch_line_counts_from_one_and_estimates_time_left():
    starts, ends = [0.0, 100.0, 200.0], [30.0, 130.0, 230.0]  # 30 s per epoch
    assert epoch_progress_line(3, 10, starts, ends) == "epoch 4 of 10 done (30.0 s per epoch, about 3 min left)"
    assert epoch_progress_line(9, 10, starts, ends).startswith("epoch 10 of 10 done")
    assert epoch_progress_line(9, 10, starts, ends).endswith("about 0 s left)")
    assert epoch_progress_line(0, 1000, [0.0], [148.0]).endswith("about 41.1 h left)")
